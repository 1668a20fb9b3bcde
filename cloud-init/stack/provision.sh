#!/bin/bash
# stackemu stack profile: the provisioning run (upstream parity). cloud-init's runcmd (user-data)
# starts it once, from the bundle ISO, during `stackemu build-image --profile stack --payload
# TAR`. It loads the payload (payload.tar, a `docker save` tarball) into the guest's Docker,
# generates the stack's secrets, installs the units that run the container with host networking
# at every boot, starts it, runs the migration hook and the smoke-test hook, makes later boots
# fast, then reports STACK_CLOUD_INIT_DONE and powers off. Any failure reports
# STACK_CLOUD_INIT_FAILED (EXIT trap) and powers off. See README.md beside this file.
set -eu

bundle_dir="${1:-$(dirname "$(readlink -f "$0")")}"
lib_dir=/usr/local/lib/stack
container=stack

# Markers go on their own line, to every console: a leading newline ends whatever the kernel
# was printing.
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

progress "provisioning the stack profile from $bundle_dir"
for f in payload.tar hook-migrate hook-smoke-test secrets.names stack-secrets \
  stack-run-container stack-hostshare stack-ready stack-secrets.service \
  stack-hostshare.service stack.service stack-ready.service; do
  if [ ! -f "$bundle_dir/$f" ]; then
    if [ "$f" = payload.tar ]; then
      echo "provision.sh: the bundle has no payload.tar: build with --payload FILE" >&2
    else
      echo "provision.sh: $f is missing from the bundle" >&2
    fi
    exit 1
  fi
done
command -v docker >/dev/null || { echo "provision.sh: docker is not installed (docker.io)" >&2; exit 1; }

# --- Files: helpers, hooks, units -------------------------------------------------------------
progress "installing the stack's units and helpers"
install -d -m 0755 "$lib_dir" "$lib_dir/hooks" /etc/stack /var/lib/stack/data
install -m 0755 "$bundle_dir/stack-secrets" "$bundle_dir/stack-run-container" \
  "$bundle_dir/stack-hostshare" "$bundle_dir/stack-ready" "$lib_dir/"
install -m 0755 "$bundle_dir/hook-migrate" "$lib_dir/hooks/migrate"
install -m 0755 "$bundle_dir/hook-smoke-test" "$lib_dir/hooks/smoke-test"
install -m 0644 "$bundle_dir/secrets.names" /etc/stack/secrets.names
install -m 0644 "$bundle_dir/stack-secrets.service" "$bundle_dir/stack-hostshare.service" \
  "$bundle_dir/stack.service" "$bundle_dir/stack-ready.service" /etc/systemd/system/
systemctl daemon-reload

# --- Docker ---------------------------------------------------------------------------------
progress "starting Docker"
systemctl enable --quiet containerd.service docker.service
systemctl start docker.service
docker version --format 'Docker {{.Server.Version}} (API {{.Server.APIVersion}})'

payload_mib=$(($(stat -c %s "$bundle_dir/payload.tar") / 1048576))
progress "loading the payload (${payload_mib} MiB) with docker load"
load_output="$(docker load --input "$bundle_dir/payload.tar")"
printf '%s\n' "$load_output"
# "Loaded image: NAME:TAG" per tag; a payload without tags reports "Loaded image ID: sha256:...".
image_ref="$(printf '%s\n' "$load_output" | sed -n 's/^Loaded image: //p' | head -n 1)"
[ -n "$image_ref" ] || image_ref="$(printf '%s\n' "$load_output" | sed -n 's/^Loaded image ID: //p' | head -n 1)"
[ -n "$image_ref" ] || { echo "provision.sh: docker load reported no image" >&2; exit 1; }
image_id="$(docker image inspect --format '{{.Id}}' "$image_ref")"
[[ $image_id =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "provision.sh: unexpected image id '$image_id'" >&2; exit 1; }
progress "loaded $image_ref ($image_id)"
# The unit runs the image by id: a later `docker tag` cannot change what starts.
printf 'STACK_IMAGE=%s\nSTACK_IMAGE_REF=%s\n' "$image_id" "$image_ref" >/etc/stack/image.env.new
chmod 0644 /etc/stack/image.env.new
mv /etc/stack/image.env.new /etc/stack/image.env

# --- Secrets: generated once, here, and kept (the migrations below see them) -----------------
progress "generating the stack's secrets"
"$lib_dir/stack-secrets"
[ "$(stat -c %a /etc/stack/secrets.env)" = 600 ] || { echo "provision.sh: secrets.env is not 0600" >&2; exit 1; }

# --- The container, the migration hook, the smoke test -----------------------------------------
systemctl enable --quiet stack-secrets.service stack-hostshare.service stack.service \
  stack-ready.service
progress "starting the container (host networking)"
systemctl start stack.service

export STACK_CONTAINER="$container" STACK_IMAGE="$image_id"
progress "running the migration hook"
"$lib_dir/hooks/migrate"
progress "running the smoke test (/health?db=1, up to ${STACK_SMOKE_BUDGET:-300} s)"
"$lib_dir/hooks/smoke-test"
progress "the smoke test passed"

progress "stopping the container"
systemctl stop stack.service
# Stopped containers the hooks may have left are not part of the image. (Images stay: an
# untagged payload image would count as dangling once its container is gone.)
docker container prune --force >/dev/null

if systemctl is-active --quiet qemu-guest-agent; then
  progress "the guest agent is running"
else
  progress "note: the guest agent is not running in this build VM (no virtio-serial port?)"
fi

# --- Fast later boots ---------------------------------------------------------------------------
progress "making later boots fast"
# cloud-init has done its work; at runtime it would only spend seconds of Python under TCG.
touch /etc/cloud/cloud-init.disabled
# Docker waits for network-online.target; the services listen on the guest's own addresses
# whatever DHCP says, so nothing needs to wait for a fully configured network.
systemctl disable --quiet systemd-networkd-wait-online.service
# Free blocks (docker load's temporary files) become holes, so the compressed image stays
# small; the build VM's disk passes discards through.
fstrim --quiet / 2>/dev/null || true
sync

progress "provisioning finished"
console_line STACK_CLOUD_INIT_DONE
trap - EXIT
systemctl --no-block poweroff
