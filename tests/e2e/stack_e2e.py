#!/usr/bin/env python3
"""End-to-end: the `stack` profile (upstream parity) built and started on real QEMU (TCG), with
the stand-in bundle in place of the real all-in-one image.

Usage: tests/e2e/stack_e2e.py STACKEMU

1. The profile has no password lines (cloud-config password/chpasswd keys).
2. tests/e2e/make_standin_bundle.py writes the stand-in (`docker save` format, stdlib only).
3. `stackemu build-image --profile stack --payload TAR --output TMP/stack.qcow2 --json` on the
   Debian base (built from Debian packages on first use, cached in ~/.cache/stackemu/bases):
   the guest `docker load`s the payload, runs the migration and smoke-test hooks.
4. `stackemu start --image TMP/stack.qcow2 --name stack-e2e --json` on free host ports: the
   four upstream probes answer through 127.0.0.1; the secrets file is 0600 in the guest; the
   migration hook's result is in the data volume; cloud-init is disabled for later boots.
5. `stackemu stop` is clean (exit 0, first rung).
Everything runs in a temporary run directory; QEMU processes and temporary files are removed
even on failure (STACKEMU_E2E_KEEP=1 keeps the files, e.g. the build logs, for a look). Prints the wall times (base, provisioning, compression, start to ready).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_e2e import Failure, Instance, check  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PROFILE_DIR = os.path.join(REPO, "cloud-init", "stack")
MAKE_STANDIN = os.path.join(HERE, "make_standin_bundle.py")
NAME = "stack-e2e"
# Generous ceilings against hangs, not performance assertions.
BUILD_TIMEOUT_S = 3300
START_TIMEOUT_S = 900

# cloud-config keys that set a password, and chpasswd (which takes a list of them).
PASSWORD_LINE = re.compile(r"^\s*-?\s*(password|passwd|plain_text_passwd|hashed_passwd)\s*:",
                           re.IGNORECASE)


def log(msg):
    print(f"stack_e2e: {msg}", flush=True)


def check_no_password_lines():
    for name in sorted(os.listdir(PROFILE_DIR)):
        path = os.path.join(PROFILE_DIR, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                check(not PASSWORD_LINE.search(line) and "chpasswd" not in line.lower(),
                      f"{path}:{number} sets a password: {line.strip()}")
    log("the stack profile has no password lines")


def probe(port, path):
    """(status, body) of GET http://127.0.0.1:PORT/PATH."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def build_image(inst, tarball, image):
    log("building the image (the base is built from Debian packages on first use)")
    t0 = time.monotonic()
    # stderr (the progress lines) goes straight to this test's output; stdout is the JSON.
    p = subprocess.run([inst.stackemu, "build-image", "--profile", "stack", "--payload", tarball,
                        "--output", image, "--json"],
                       env=inst.env, stdout=subprocess.PIPE, text=True, timeout=BUILD_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    log(f"stackemu build-image -> {p.returncode} in {elapsed:.1f}s")
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise Failure(f"build-image printed no JSON result (exit {p.returncode}): {p.stdout!r}")
    if p.returncode != 0 or not out.get("ok"):
        lines = "\n".join(out.get("last_lines", []))
        raise Failure(f"build-image failed (exit {p.returncode}, cause {out.get('cause')}): "
                      f"{out.get('failure')}\n{lines}\nlogs: {out.get('logs')}")
    phases = out["phases_ms"]
    log("build phases: " + ", ".join(f"{k} {v / 1000:.1f} s" for k, v in phases.items()) +
        f"; base {'reused from the cache' if out['base_cached'] else 'built'}; "
        f"image {out['bytes'] / 2**20:.1f} MiB; total {out['total_ms'] / 1000:.1f} s")
    check(os.path.isfile(image) and os.path.isfile(out["manifest"]), "no image or manifest")
    with open(out["manifest"]) as f:
        manifest = json.load(f)
    prof = manifest["profile"]
    check(prof["name"] == "stack" and prof["ready_marker"] == "STACK_EMULATOR_READY",
          f"the manifest does not describe the stack profile: {prof}")
    check(sorted(p["path"] for p in prof["probes"]) ==
          sorted(["/minio/health/live", "/", "/health?db=1", "/handler/sign-in"]),
          f"the manifest's probes are not upstream's four: {prof['probes']}")
    return out


def exec_in_guest(inst, *argv):
    p, _ = inst.run("exec", "--name", NAME, "--", *argv, timeout=120)
    check(p.returncode == 0, f"exec {' '.join(argv)} failed ({p.returncode}): {p.stdout} {p.stderr}")
    return p.stdout.strip()


def run(stackemu, tmp):
    check_no_password_lines()
    tarball = os.path.join(tmp, "standin.tar")
    p = subprocess.run([sys.executable, MAKE_STANDIN, tarball], capture_output=True, text=True,
                       timeout=120)
    check(p.returncode == 0, f"make_standin_bundle.py failed: {p.stdout} {p.stderr}")
    standin = json.loads(p.stdout)
    log(f"stand-in bundle {standin['image']} ({standin['bytes']} bytes, {standin['image_id']})")

    image = os.path.join(tmp, "stack.qcow2")
    inst = Instance(stackemu, image, tmp)
    inst.env["EMULATOR_READY_TIMEOUT"] = "600"
    ports = {name: int(inst.env[f"EMULATOR_{name.upper()}_PORT"])
             for name in ("dashboard", "backend", "minio", "inbucket")}
    started = False
    try:
        build = build_image(inst, tarball, image)

        log(f"starting {NAME} on ports {ports}")
        p, elapsed = inst.run("start", "--image", image, "--name", NAME, "--ram", "1536",
                              "--cpus", "2", "--json", timeout=START_TIMEOUT_S)
        started = True
        check(p.returncode == 0, f"start failed ({p.returncode}): {p.stdout} {p.stderr}")
        out = json.loads(p.stdout)
        check(out["ready"], f"start did not report ready: {out}")
        log(f"first start ready in {out['total_ms'] / 1000:.1f} s (wall {elapsed:.1f} s); "
            f"accelerator: {out['accelerator']}")

        for name, path in (("minio", "/minio/health/live"), ("inbucket", "/"),
                           ("backend", "/health?db=1"), ("dashboard", "/handler/sign-in")):
            status, body = probe(ports[name], path)
            check(status == 200, f"{name} {path} answered {status} through 127.0.0.1")
            log(f"{name} 127.0.0.1:{ports[name]}{path} -> {status}")
        status, body = probe(ports["backend"], "/health?db=1")
        health = json.loads(body)
        check(health["db"]["reachable"] is True, f"the backend reports no database: {body}")

        mode = exec_in_guest(inst, "stat", "-c", "%a %U", "/etc/stack/secrets.env")
        check(mode == "600 root", f"/etc/stack/secrets.env is {mode!r}, not '600 root'")
        log("the secrets file is 0600 root in the guest")
        schema = exec_in_guest(inst, "cat", "/var/lib/stack/data/stack-schema")
        check(schema == "1", f"the migration hook left schema {schema!r} in the data volume")
        exec_in_guest(inst, "test", "-e", "/etc/cloud/cloud-init.disabled")
        active = exec_in_guest(inst, "systemctl", "is-active", "stack.service",
                               "stack-ready.service")
        check(active.split() == ["active", "active"], f"the stack's units: {active}")
        log("the migration ran during the build; cloud-init is off; the units are active")

        p, _ = inst.run("stop", "--name", NAME, "--json", timeout=300)
        check(p.returncode == 0, f"stop was not clean ({p.returncode}): {p.stdout} {p.stderr}")
        stop = json.loads(p.stdout)
        started = False
        check(stop["clean"], f"stop was not clean: {stop}")
        log(f"stopped on rung {stop['rung']} in {stop['total_ms'] / 1000:.1f} s")
        check(not inst.qemu_pids(), "QEMU still runs after stop")
        phases = build["phases_ms"]
        log("wall times: " + f"base {phases.get('base', 0) / 1000:.1f} s, "
            f"provisioning {phases.get('provisioning', 0) / 1000:.1f} s, "
            f"compression {phases.get('compression', 0) / 1000:.1f} s, "
            f"first start to ready {out['total_ms'] / 1000:.1f} s")
    finally:
        try:
            if started:
                inst.run("stop", "--name", NAME, timeout=300)
        finally:
            inst.cleanup()


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    stackemu = os.path.abspath(sys.argv[1])
    tmp = tempfile.mkdtemp(prefix="stackemu-e2e-stack-")
    keep = os.environ.get("STACKEMU_E2E_KEEP") == "1"
    try:
        run(stackemu, tmp)
    except (Failure, subprocess.TimeoutExpired, json.JSONDecodeError, OSError, KeyError) as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        if keep:
            log(f"kept {tmp} (STACKEMU_E2E_KEEP=1): the run directory and build-logs/")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
