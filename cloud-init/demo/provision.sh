#!/bin/bash
# stackemu demo profile: the provisioning run. cloud-init's runcmd (user-data) starts it once,
# from the bundle ISO, during `stackemu build-image`. It warms up PostgreSQL (cluster, role,
# database, table) and Redis, installs the backend (:26701) and the dashboard (:26700) as
# systemd units, makes later boots fast, then reports STACK_CLOUD_INIT_DONE (cloud-init then
# powers off: power_state in user-data). Any failure reports STACK_CLOUD_INIT_FAILED and powers
# off at once. No passwords: the backend reaches PostgreSQL over its Unix socket with peer
# authentication as the system user stackapp.
set -eu

bundle_dir="${1:-$(dirname "$(readlink -f "$0")")}"
app_user=stackapp
app_db=stackapp
install_dir=/opt/stackemu-demo

# Markers go on their own line: a leading newline ends whatever the kernel was printing.
console_line() {
  local dev
  for dev in /dev/ttyS0 /dev/console; do
    printf '\n%s\n' "$1" >"$dev" 2>/dev/null || true
  done
}
progress() {
  printf 'STACK_PROGRESS %s\n' "$*" >/dev/ttyS0 2>/dev/null || true
}
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    progress "provisioning failed (exit status $status); the lines above show where"
    console_line STACK_CLOUD_INIT_FAILED
    systemctl --no-block poweroff || poweroff -f
  fi
}
trap on_exit EXIT

as_postgres() { runuser -u postgres -- "$@"; }

progress "provisioning the demo profile from $bundle_dir"
for f in backend.py dashboard.py index.html stack-ready.sh \
  stackemu-demo-backend.service stackemu-demo-dashboard.service stackemu-demo-ready.service; do
  [ -f "$bundle_dir/$f" ] || { echo "provision.sh: $f is missing from the bundle" >&2; exit 1; }
done

# --- PostgreSQL: Debian's postinst normally made the cluster; make it when it could not. ----
# The server's own binaries are called directly: Debian's wrappers (pg_wrapper, pg_lsclusters,
# pg_ctlcluster, update-rc.d behind `systemctl enable`) are Perl, seconds each under TCG.
pg_version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
[ -n "$pg_version" ] || { echo "provision.sh: PostgreSQL is not installed" >&2; exit 1; }
pg_bin="/usr/lib/postgresql/$pg_version/bin"
if [ ! -f "/etc/postgresql/$pg_version/main/postgresql.conf" ]; then
  progress "creating the PostgreSQL $pg_version cluster"
  pg_createcluster "$pg_version" main
fi
# The cluster's unit, in place of Debian's postgresql@.service for it: pg_ctlcluster (Perl)
# takes many seconds under TCG to start a server that is itself ready in about one, so systemd
# runs the server directly (Debian builds it with Type=notify support); and it does not wait for
# network.target, as it listens on localhost only. SIGINT is PostgreSQL's fast shutdown, as
# `pg_ctlcluster stop -m fast`. The server logs to the journal.
cluster_unit="postgresql@$pg_version-main.service"
cat >"/etc/systemd/system/$cluster_unit" <<UNIT
[Unit]
Description=PostgreSQL Cluster $pg_version-main (started directly, stackemu demo)
AssertPathExists=/etc/postgresql/$pg_version/main/postgresql.conf
RequiresMountsFor=/etc/postgresql/$pg_version/main /var/lib/postgresql/$pg_version/main
PartOf=postgresql.service
ReloadPropagatedFrom=postgresql.service
Before=postgresql.service

[Service]
Type=notify
User=postgres
Group=postgres
ExecStart=/usr/lib/postgresql/$pg_version/bin/postgres -D /var/lib/postgresql/$pg_version/main -c config_file=/etc/postgresql/$pg_version/main/postgresql.conf
ExecReload=/bin/kill -HUP \$MAINPID
KillMode=mixed
KillSignal=SIGINT
TimeoutStartSec=infinity
TimeoutStopSec=120
OOMScoreAdjust=-900

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
progress "starting PostgreSQL $pg_version"
# postgresql.service is enabled by its package; the generator ties the cluster to it.
# The boot already started the cluster the Debian way: restart it the way later boots will, so
# that this run checks the unit. Type=notify: the job completes when the server accepts
# connections.
systemctl restart "$cluster_unit"
systemctl start postgresql.service
as_postgres "$pg_bin/pg_isready" --quiet

progress "creating the role and database $app_db"
if ! id -u "$app_user" >/dev/null 2>&1; then
  useradd --system --home-dir "/var/lib/$app_user" --create-home --shell /usr/sbin/nologin \
    "$app_user"
fi
# Peer authentication (Debian's default for local sockets) maps the system user to the role.
# Each statement runs only when its object is missing (\gexec runs the generated statement).
as_postgres "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$app_user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$app_user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$app_db', '$app_user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$app_db') \gexec
SQL
runuser -u "$app_user" -- "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$app_db" <<'SQL'
CREATE TABLE IF NOT EXISTS stack_health (
    id serial PRIMARY KEY,
    note text NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
INSERT INTO stack_health (note) VALUES ('provisioned');
SQL

# --- Redis ------------------------------------------------------------------------------------
progress "starting Redis"
# Enabled by its package (an explicit enable would run update-rc.d, Perl).
systemctl start redis-server
[ "$(redis-cli ping)" = PONG ] || { echo "provision.sh: Redis does not answer PING" >&2; exit 1; }

# --- The backend, the dashboard and the ready marker -----------------------------------------
progress "installing the backend (:26701) and the dashboard (:26700)"
install -d -m 0755 "$install_dir" "$install_dir/dashboard"
install -m 0755 "$bundle_dir/backend.py" "$bundle_dir/dashboard.py" "$bundle_dir/stack-ready.sh" \
  "$install_dir/"
install -m 0644 "$bundle_dir/index.html" "$install_dir/dashboard/"
install -m 0644 "$bundle_dir/stackemu-demo-backend.service" \
  "$bundle_dir/stackemu-demo-dashboard.service" "$bundle_dir/stackemu-demo-ready.service" \
  /etc/systemd/system/
systemctl daemon-reload
systemctl enable --quiet stackemu-demo-backend stackemu-demo-dashboard stackemu-demo-ready
progress "starting the backend and the dashboard"
systemctl start stackemu-demo-backend stackemu-demo-dashboard
# The smoke test: what the ready unit checks at every boot (a PostgreSQL query through the
# backend, both ports), without writing the ready marker during the build.
"$install_dir/stack-ready.sh" --no-marker
progress "the backend queries PostgreSQL and the dashboard answers"

if systemctl is-active --quiet qemu-guest-agent; then
  progress "the guest agent is running"
else
  progress "note: the guest agent is not running in this build VM (no virtio-serial port?)"
fi

# --- Fast later boots ---------------------------------------------------------------------------
progress "making later boots fast"
# cloud-init has done its work; at runtime it would only spend seconds of Python under TCG.
touch /etc/cloud/cloud-init.disabled
# Nothing waits for a fully configured network at runtime: the services listen on 0.0.0.0.
systemctl disable --quiet systemd-networkd-wait-online.service
# Free blocks become holes when the build VM's disk allows discards; harmless otherwise.
fstrim / 2>/dev/null || true
sync

progress "provisioning finished"
console_line STACK_CLOUD_INIT_DONE
trap - EXIT
# user-data's power_state powers the VM off once cloud-init has finished (a poweroff from here
# would kill cloud-init in the middle of its final stage).
