#!/usr/bin/env bash
# Restore a clean database before every test run, on the demo image:
#   stackemu start                       # the demo profile: PostgreSQL in the guest
#   docs/examples/restore-loop.sh 20     # save "clean" once, then 20 x (tests, restore)
# Each cycle writes rows into PostgreSQL (standing in for a test suite), loads the snapshot
# "clean", and checks the rows are gone. Prints one line per cycle with its times, and exits
# non-zero at the first cycle that goes wrong. STACKEMU names the binary (default: stackemu on
# PATH); EMULATOR_NAME / EMULATOR_RUN_DIR choose the instance as for stackemu itself.
set -euo pipefail

stackemu="${STACKEMU:-stackemu}"
cycles="${1:-20}"
case "$cycles" in '' | *[!0-9]*) echo "usage: $0 [CYCLES]" >&2; exit 2 ;; esac

# psql as the app's own role over its Unix socket (peer authentication: no password).
sql() { "$stackemu" exec -- runuser -u stackapp -- psql -d stackapp -v ON_ERROR_STOP=1 -qtAc "$1"; }
now() { date +%s.%N; }
elapsed() { echo "$1 $2" | awk '{ printf "%.2f", $2 - $1 }'; }

# Once: the clean state (RAM and disk) every cycle goes back to.
"$stackemu" snapshot save clean --replace --json >/dev/null
baseline="$(sql "SELECT count(*) FROM stack_health")"
echo "saved snapshot clean ($baseline rows in stack_health)"

total_start="$(now)"
for i in $(seq 1 "$cycles"); do
    t0="$(now)"
    # The "test run": it leaves rows behind.
    sql "INSERT INTO stack_health (note) SELECT 'test run $i' FROM generate_series(1, 100)"
    written="$(sql "SELECT count(*) FROM stack_health")"
    t1="$(now)"
    # Exit codes (README, Snapshots): 3 no such snapshot, 4 refused, 6 QEMU's job failed, 7 busy.
    "$stackemu" snapshot load clean --json >/dev/null
    t2="$(now)"
    left="$(sql "SELECT count(*) FROM stack_health")"
    if [ "$left" != "$baseline" ]; then
        echo "cycle $i: $left rows after the restore, expected $baseline" >&2
        exit 1
    fi
    echo "cycle $i: $written rows written in $(elapsed "$t0" "$t1") s, restored in $(elapsed "$t1" "$t2") s, $left rows after; cycle $(elapsed "$t0" "$(now)") s"
done
echo "$cycles cycles in $(elapsed "$total_start" "$(now)") s"
