#!/bin/bash
# stackemu e2e: a profile whose provisioning fails on purpose, after two progress lines, so
# that build-image's failure path (marker, cause, last lines, no image left) can be tested.
# The EXIT trap is the demo profile's.
set -eu

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

progress "fail profile: step one of two"
progress "fail profile: step two of two"
echo "provision.sh: failing on purpose (tests/e2e/profiles/fail)" >&2
false
