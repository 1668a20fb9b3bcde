#!/usr/bin/env python3
"""Builds the stand-in bundle for the `stack` profile: a small container image in `docker save`
format, assembled with Python's standard library only (no Docker engine on the host).

Usage: tests/e2e/make_standin_bundle.py OUTPUT.tar [--busybox PATH] [--tag NAME:TAG]

The image is one layer: a busybox root (the host's static /bin/busybox and a symlink per applet
in /bin), a /www tree, and two commands:
  /bin/stack-standin   the entrypoint: busybox httpd on the four upstream ports, each answering
                       the path the emulator probes (dashboard 26700 /handler/sign-in, backend
                       26701 /health, MinIO 26702 /minio/health/live, Inbucket 26703 /)
  /bin/stack-migrate   the migration command (image label org.stackemu.migrate): records a
                       schema version in /data, the container's data volume
busybox httpd drops the query string before it looks a file up, so the backend's static
/health file also answers /health?db=1 (its body reports the database as reachable).

The tarball follows the layout `docker save` writes (Docker image specification v1.2, which
`docker load` of Debian 12's docker.io 20.10 reads): manifest.json, repositories, the image
config <image id>.json and <layer id>/{VERSION,json,layer.tar}. Every entry has a fixed mtime,
owner and order, so the same busybox gives the same bytes (and image id) on every run. A JSON
summary goes to stdout.
"""
import argparse
import hashlib
import io
import json
import os
import platform
import struct
import subprocess
import sys
import tarfile
import tempfile

# 2024-01-01T00:00:00Z: the mtime of every entry and the image's creation date.
FIXED_EPOCH = 1704067200
FIXED_DATE = "2024-01-01T00:00:00Z"
DEFAULT_TAG = "stackemu/standin:1"
PORTS = {"dashboard": 26700, "backend": 26701, "minio": 26702, "inbucket": 26703}

ENTRYPOINT = """#!/bin/sh
# stackemu stand-in bundle: the four upstream services as busybox httpd, one per port, on the
# host's network (the stack profile runs the container with --network host).
set -eu
echo "stack-standin: serving dashboard :${STACK_DASHBOARD_PORT:-26700}, backend :${STACK_BACKEND_PORT:-26701}, minio :${STACK_MINIO_PORT:-26702}, inbucket :${STACK_INBUCKET_PORT:-26703}"
if [ -r /data/stack-schema ]; then
  echo "stack-standin: data volume schema: $(cat /data/stack-schema)"
fi
# Without -f httpd forks into the background once it listens: a port that cannot be bound
# stops the entrypoint here, with httpd's message.
httpd -p "${STACK_DASHBOARD_PORT:-26700}" -h /www/dashboard
httpd -p "${STACK_MINIO_PORT:-26702}" -h /www/minio
httpd -p "${STACK_INBUCKET_PORT:-26703}" -h /www/inbucket
# The backend stays in the foreground: the container lives as long as it does.
exec httpd -f -v -p "${STACK_BACKEND_PORT:-26701}" -h /www/backend
"""

MIGRATE = """#!/bin/sh
# stackemu stand-in bundle: the migration command. The stack profile's hook-migrate runs it with
# `docker exec` in the running container; it records the schema version in the data volume.
set -eu
[ -d /data ] || { echo "stack-migrate: /data (the data volume) is missing" >&2; exit 1; }
version=1
current=""
[ -r /data/stack-schema ] && current="$(cat /data/stack-schema)"
if [ "$current" = "$version" ]; then
  echo "stack-migrate: schema $version is already applied"
else
  echo "$version" > /data/stack-schema.new && mv /data/stack-schema.new /data/stack-schema
  echo "stack-migrate: applied schema $version"
fi
"""

HEALTH = json.dumps({"status": "ok", "db": {"reachable": True, "engine": "stand-in"},
                     "service": "stackemu stand-in backend"}) + "\n"

PAGES = {
    "www/dashboard/index.html":
        "<!doctype html><title>stand-in dashboard</title><p>stackemu stand-in dashboard</p>\n",
    "www/dashboard/handler/sign-in":
        "<!doctype html><title>Sign in</title><p>stackemu stand-in: sign-in page</p>\n",
    "www/backend/health": HEALTH,
    "www/backend/index.html": "<!doctype html><title>stand-in backend</title><p>see /health</p>\n",
    "www/minio/minio/health/live": "",
    "www/inbucket/index.html":
        "<!doctype html><title>Inbucket</title><p>stackemu stand-in mail viewer</p>\n",
}


def fail(message):
    print(f"make_standin_bundle: {message}", file=sys.stderr)
    sys.exit(1)


def docker_arch():
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine) or fail(
        f"unsupported host architecture {machine}: the image copies the host's busybox")


def is_static_elf(data):
    """True for an ELF file without a program interpreter (PT_INTERP): it runs in an empty root."""
    if data[:4] != b"\x7fELF" or data[4] != 2:  # ELFCLASS64 only (amd64, arm64)
        return False
    endian = "<" if data[5] == 1 else ">"
    phoff = struct.unpack_from(endian + "Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def busybox_applets(busybox):
    out = subprocess.run([busybox, "--list"], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{busybox} --list failed: {out.stderr.strip()}")
    applets = sorted({a for a in out.stdout.split() if a and "/" not in a and a != "busybox"})
    for needed in ("sh", "httpd", "cat", "mv"):
        if needed not in applets:
            fail(f"{busybox} has no {needed} applet; the stand-in needs sh, httpd, cat and mv")
    return applets


class DeterministicTar:
    """A tar written in a fixed order with fixed owners and mtimes."""

    def __init__(self, fileobj):
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)

    def _info(self, name, kind, mode, size=0, target=""):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.size = size
        info.linkname = target
        info.mtime = FIXED_EPOCH
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def directory(self, name, mode=0o755):
        self.tar.addfile(self._info(name.rstrip("/") + "/", tarfile.DIRTYPE, mode))

    def file(self, name, data, mode=0o644):
        if isinstance(data, str):
            data = data.encode()
        self.tar.addfile(self._info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))

    def symlink(self, name, target):
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, target=target))

    def close(self):
        self.tar.close()


def layer_tar(busybox_bytes, applets):
    buf = io.BytesIO()
    t = DeterministicTar(buf)
    t.directory("bin")
    t.file("bin/busybox", busybox_bytes, 0o755)
    for applet in applets:
        t.symlink(f"bin/{applet}", "busybox")
    t.file("bin/stack-migrate", MIGRATE, 0o755)
    t.file("bin/stack-standin", ENTRYPOINT, 0o755)
    t.directory("data")
    t.directory("tmp", 0o1777)
    dirs = set()
    for path in sorted(PAGES):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                t.directory(d)
        t.file(path, PAGES[path])
    t.close()
    return buf.getvalue()


def image_config(arch, diff_id):
    config = {
        "architecture": arch,
        "os": "linux",
        "created": FIXED_DATE,
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/stack-standin"],
            "WorkingDir": "/",
            "ExposedPorts": {f"{p}/tcp": {} for p in PORTS.values()},
            "Volumes": {"/data": {}},
            "Labels": {
                "org.stackemu.migrate": "/bin/stack-migrate",
                "org.stackemu.description": "stackemu stand-in bundle (busybox httpd)",
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": FIXED_DATE,
                     "created_by": "tests/e2e/make_standin_bundle.py (busybox root, /www tree)"}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def build(busybox, tag):
    with open(busybox, "rb") as f:
        busybox_bytes = f.read()
    if not is_static_elf(busybox_bytes):
        fail(f"{busybox} is not a static 64-bit ELF executable: the container has no C library. "
             "Install busybox-static (apt-get install busybox-static) or pass --busybox")
    arch = docker_arch()
    layer = layer_tar(busybox_bytes, busybox_applets(busybox))
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = image_config(arch, diff_id)
    image_id = hashlib.sha256(config).hexdigest()
    # `docker save` names the layer directory after the legacy v1 id, a hash over the chain; any
    # stable 64-hex-digit name loads. This one depends on the layer and the config.
    layer_id = hashlib.sha256(f"{diff_id}\n{image_id}\n".encode()).hexdigest()
    repo, _, tag_name = tag.rpartition(":")
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag],
                 "Layers": [f"{layer_id}/layer.tar"]}]
    legacy_json = {"id": layer_id, "created": FIXED_DATE, "os": "linux", "architecture": arch,
                   "config": json.loads(config)["config"]}

    out = io.BytesIO()
    t = DeterministicTar(out)
    t.directory(layer_id)
    t.file(f"{layer_id}/VERSION", "1.0")
    t.file(f"{layer_id}/json", json.dumps(legacy_json, sort_keys=True, separators=(",", ":")))
    t.file(f"{layer_id}/layer.tar", layer)
    t.file(f"{image_id}.json", config)
    t.file("manifest.json", json.dumps(manifest, separators=(",", ":")))
    t.file("repositories", json.dumps({repo: {tag_name: layer_id}}, separators=(",", ":")))
    t.close()
    return out.getvalue(), {"image": tag, "image_id": f"sha256:{image_id}", "diff_id": diff_id,
                            "architecture": arch}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the tarball to write (docker save format)")
    parser.add_argument("--busybox", default="/bin/busybox",
                        help="a static busybox (default /bin/busybox from busybox-static)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"repository:tag (default {DEFAULT_TAG})")
    args = parser.parse_args()
    repo, sep, tag_name = args.tag.rpartition(":")
    if not sep or not repo or not tag_name or "/" in tag_name:
        fail(f"--tag {args.tag}: give repository:tag, e.g. {DEFAULT_TAG}")
    if not os.path.isfile(args.busybox):
        fail(f"{args.busybox} does not exist: install busybox-static (apt-get install "
             "busybox-static) or pass --busybox PATH")
    data, summary = build(args.busybox, args.tag)
    output = os.path.abspath(args.output)
    unchanged = False
    if os.path.isfile(output):
        with open(output, "rb") as f:
            unchanged = f.read() == data
    if not unchanged:
        fd, tmp = tempfile.mkstemp(prefix=".standin-", dir=os.path.dirname(output))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    summary.update({"tarball": output, "bytes": len(data), "unchanged": unchanged,
                    "sha256": hashlib.sha256(data).hexdigest()})
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
