#!/usr/bin/env python3
"""`cmake --install` into a temporary prefix, then the installed stackemu works from there.

Usage: installed.py BUILD_DIR

Checks that the one-shot binary (bin/stackemu) links none of the heavy libraries, runs its
own commands and execs the full one (libexec/stackemu/stackemu-full) for the rest, that `build-image --profile demo --help` and
`doctor` succeed, and that profiles are read from <prefix>/share/stackemu/cloud-init, not
from the source tree the build came from.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

failures = []


def check(cond, what, detail=""):
    print(("ok   " if cond else "FAIL ") + what + ("" if cond or not detail else "\n" + detail))
    if not cond:
        failures.append(what)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main():
    build = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="stackemu-install-")
    try:
        prefix = os.path.join(work, "prefix")
        subprocess.run(["cmake", "--install", build, "--prefix", prefix], check=True,
                       stdout=subprocess.DEVNULL)
        exe = os.path.join(prefix, "bin", "stackemu")
        full = os.path.join(prefix, "libexec", "stackemu", "stackemu-full")
        profiles = os.path.join(prefix, "share", "stackemu", "cloud-init")
        check(os.access(exe, os.X_OK), "bin/stackemu is installed")
        check(os.access(full, os.X_OK), "libexec/stackemu/stackemu-full is installed")
        check(os.path.isfile(os.path.join(profiles, "demo", "profile.json")),
              "the demo profile is installed")

        # A sandbox doctor finds complete: an image with its manifest, free ports, tcg.
        images = os.path.join(work, "images")
        os.makedirs(images)
        for name in ("vmlinuz", "initrd.img"):
            with open(os.path.join(images, name), "w") as f:
                f.write("not a kernel\n")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                        os.path.join(images, "stack-emulator-amd64.qcow2"), "64M"], check=True)
        manifest = {
            "format": 1, "arch": "amd64", "disk": "stack-emulator-amd64.qcow2",
            "boot": {"mode": "kernel", "kernel": "vmlinuz", "initrd": "initrd.img",
                     "cmdline": "console=ttyS0"},
            "profile": {"name": "installed", "forwards": [], "probes": [],
                        "ready_marker": "STACK_EMULATOR_READY", "agent": False},
            "build_id": "installed-1"}
        with open(os.path.join(images, "stack-emulator-amd64.json"), "w") as f:
            json.dump(manifest, f)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("EMULATOR_", "STACKEMU_", "XDG_"))}
        ports = free_ports(4)
        env.update({"EMULATOR_RUN_DIR": os.path.join(work, "run"), "EMULATOR_IMAGE_DIR": images,
                    "EMULATOR_ACCEL": "tcg", "XDG_CACHE_HOME": os.path.join(work, "cache"),
                    "EMULATOR_DASHBOARD_PORT": str(ports[0]),
                    "EMULATOR_BACKEND_PORT": str(ports[1]),
                    "EMULATOR_MINIO_PORT": str(ports[2]),
                    "EMULATOR_INBUCKET_PORT": str(ports[3])})

        def run(*args):
            return subprocess.run([exe, *args], env=env, capture_output=True, text=True,
                                  timeout=120)

        # The one-shot binary (status, list, qmp, ...) loads none of the heavy libraries.
        needed = subprocess.run(["readelf", "-d", exe], capture_output=True, text=True,
                                check=True).stdout
        heavy = [lib for lib in ("libcurl", "libisofs", "libcrypto", "libssl") if lib in needed]
        check(not heavy, "bin/stackemu needs none of libcurl, libisofs, libcrypto, libssl",
              f"it needs {heavy}")

        r = run("--version")
        check(r.returncode == 0 and r.stdout == "stackemu 0.1.0\n", "--version (one-shot binary)")
        r = run("list")
        check(r.returncode == 0, "list (one-shot binary)", f"{r.returncode} {r.stderr}")
        r = run("config", "show", "--json")
        check(r.returncode == 0 and json.loads(r.stdout)["settings"]["ram"]["source"] == "default",
              "config show (one-shot binary)", f"{r.returncode} {r.stdout} {r.stderr}")
        r = run("build-image", "--profile", "demo", "--help")
        check(r.returncode == 0 and "--profile" in r.stdout,
              "build-image --profile demo --help (full binary)", f"{r.returncode} {r.stderr}")
        r = run("doctor")
        check(r.returncode == 0, "doctor", f"{r.returncode}\n{r.stdout}{r.stderr}")

        # The profile search starts at the prefix: an unknown name lists it first, and a
        # damaged installed demo profile is what build-image reads.
        r = run("build-image", "--profile", "no-such-profile")
        looked = r.stderr.split("looked in:")[-1].split()
        check(r.returncode != 0 and looked[:1] == [os.path.join(profiles, "no-such-profile")],
              "an unknown profile is looked for in the prefix first", r.stderr)
        with open(os.path.join(profiles, "demo", "profile.json"), "w") as f:
            f.write("{ not json\n")
        r = run("build-image", "--profile", "demo", "--output", os.path.join(work, "out.qcow2"))
        check(r.returncode != 0 and os.path.join(profiles, "demo", "profile.json") in r.stderr,
              "build-image reads the installed demo profile", r.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
