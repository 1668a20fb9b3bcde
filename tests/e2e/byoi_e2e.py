#!/usr/bin/env python3
"""End-to-end: bringing your own image, from the docs alone (docs/manifest.md).

Usage: tests/e2e/byoi_e2e.py STACKEMU [SCENARIO...]   (default: all)
Scenarios: lifecycle fail panic warm arch exact

The guest is the e2e test guest (a Debian kernel and a busybox initramfs, made by
scripts/build-test-guest), treated as a user's own files: no agent, no pvpanic driver (the
kernel refuses to load it), a ready line with more text after the marker. Its manifest is
written by `stackemu image init`, never by hand.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_e2e import (BUILD_GUEST, Instance, check, free_ports, log,  # noqa: E402
                     run_scenarios)

GUEST_PORT = 26701
# What a user's guest is like: no pvpanic driver, a ready line with text after the marker.
USER_CMDLINE = ("module_blacklist=pvpanic,pvpanic_pci,pvpanic_mmio stackemu.readyinfo=1 "
                f"stackemu.ports={GUEST_PORT}")


class Guest:
    """The test guest's kernel and initrd, and the cmdline they need (from its manifest)."""

    def __init__(self):
        out = subprocess.run([BUILD_GUEST], capture_output=True, text=True, check=True)
        self.dir = out.stdout.strip().splitlines()[-1]
        with open(os.path.join(self.dir, "test-guest.json")) as f:
            boot = json.load(f)["boot"]
        self.kernel = os.path.join(self.dir, boot["kernel"])
        self.initrd = os.path.join(self.dir, boot["initrd"])
        base = [w for w in boot["cmdline"].split() if not w.startswith("stackemu.ports=")]
        self.cmdline = " ".join(base + [USER_CMDLINE])


def image_init(inst, guest, tmp, *extra, name="mine"):
    host_port = free_ports(1)[0]
    inst.web_port = host_port
    p, _ = inst.run("image", "init", "--kernel", guest.kernel, "--initrd", guest.initrd,
                    "--cmdline", guest.cmdline, "--output", os.path.join(tmp, f"{name}.json"),
                    "--forward", f"web:{GUEST_PORT}:{host_port}", "--probe", "web:/health",
                    "--ready-marker", "STACK_EMULATOR_READY",
                    "--failure-marker", "STACK_CLOUD_INIT_FAILED", *extra)
    check(p.returncode == 0, f"image init failed: {p.stdout} {p.stderr}")
    inst.image = os.path.join(tmp, f"{name}.json")
    with open(inst.image) as f:
        return json.load(f)


def start(inst, *extra):
    return inst.run("start", "--image", inst.image, "--ram", "512", "--cpus", "1", *extra)


def events(inst):
    p, _ = inst.run("events", "--json")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def scenario_lifecycle(inst, guest, tmp):
    manifest = image_init(inst, guest, tmp)
    check(manifest["arch"] == "amd64" and manifest["boot"]["mode"] == "kernel",
          f"image init wrote {manifest}")
    check(manifest["profile"]["marker_match"] == "prefix", f"default match: {manifest}")
    p, _ = start(inst, "--json")
    check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")
    out = json.loads(p.stdout)
    check(out["ready"], f"not ready: {out}")
    body = urllib.request.urlopen(f"http://127.0.0.1:{inst.web_port}/health", timeout=10).read()
    check(b"ok" in body, f"the forward gave {body!r}")
    p, _ = inst.run("stop", "--json")
    check(p.returncode == 0, f"stop was not clean: {p.stdout} {p.stderr}")
    stop = json.loads(p.stdout)
    check(stop["clean"] and stop["rung"] == "powerdown",
          f"an agentless guest did not stop on the ACPI rung: {stop}")
    check(not inst.qemu_pids(), "QEMU still runs after stop")


def scenario_fail(inst, guest, tmp):
    image_init(inst, guest, tmp)
    p, elapsed = start(inst, "--append", "stackemu.mode=fail")
    check(p.returncode == 6 and "STACK_CLOUD_INIT_FAILED" in p.stderr,
          f"the failure marker was not acted on: {p.returncode} {p.stderr}")
    check(not inst.qemu_pids(), "the failed VM was left running")
    log(f"failure marker -> exit in {elapsed:.1f} s")


def scenario_panic(inst, guest, tmp):
    image_init(inst, guest, tmp)
    p, _ = start(inst, "--append", "stackemu.mode=panic")
    check(p.returncode == 6, f"a panicking guest's start exited {p.returncode}: {p.stderr}")
    check("Kernel panic - not syncing" in p.stderr,
          f"the panic was not named from the console: {p.stderr}")
    check(not any(e.get("event") == "GUEST_PANICKED" for e in events(inst)),
          "GUEST_PANICKED arrived: the guest had a pvpanic driver after all")
    check(not inst.qemu_pids(), "the panicked VM was left running")


def scenario_warm(inst, guest, tmp):
    image_init(inst, guest, tmp)
    p, _ = start(inst)
    check(p.returncode == 0, f"start failed: {p.stderr}")
    p, _ = inst.run("snapshot", "save", "stackemu-ready")
    check(p.returncode == 0, f"saving the ready state failed: {p.stdout} {p.stderr}")
    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop failed: {p.stdout} {p.stderr}")
    # The pause users have between stop and start (issue: "they start in the morning").
    time.sleep(25)
    p, _ = start(inst, "--json")
    check(p.returncode == 0, f"warm start after a pause failed: {p.stderr}")
    out = json.loads(p.stdout)
    check(out["warm"], f"the start after a pause was not warm: {out}")
    check("no guest agent" in out["clock_note"] and "behind the host by" in out["clock_note"],
          f"an agentless warm start did not say its clock is behind: {out}")
    phases = {ph["phase"]: round(ph["ms"]) for ph in out["phases"]}
    log(f"warm start after 25 s: {out['total_ms']:.0f} ms; phases {phases}")
    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop after the warm start failed: {p.stdout}")


def scenario_arch(inst, guest, tmp):
    # image init reads the kernel's header: a flag that lies is refused, nothing written.
    target = os.path.join(tmp, "lie.json")
    p, _ = inst.run("image", "init", "--kernel", guest.kernel, "--initrd", guest.initrd,
                    "--arch", "arm64", "--output", target)
    check(p.returncode != 0 and "amd64 kernel" in p.stderr, f"--arch arm64 accepted: {p.stderr}")
    check(not os.path.exists(target) and not os.path.exists(target[:-5] + ".qcow2"),
          "a refused image init left files behind")
    # A manifest edited by hand to say arm64 is refused by start before anything is created.
    manifest = image_init(inst, guest, tmp)
    manifest["arch"] = "arm64"
    with open(inst.image, "w") as f:
        json.dump(manifest, f)
    inst.env["EMULATOR_ARCH"] = "arm64"
    try:
        p, _ = start(inst)
    finally:
        del inst.env["EMULATOR_ARCH"]
    check(p.returncode != 0 and "is an amd64 kernel" in p.stderr,
          f"a manifest that lies about its arch was started: {p.returncode} {p.stderr}")
    check(not os.path.exists(os.path.join(inst.run_dir, "vm", "disk.qcow2")),
          "the refused start created an overlay")


def scenario_exact(inst, guest, tmp):
    # marker_match exact: the ready line has text after the marker, so it never matches, and
    # the timeout names the console line still missing.
    image_init(inst, guest, tmp, "--marker-match", "exact")
    inst.env["EMULATOR_READY_TIMEOUT"] = "30"
    p, _ = start(inst)
    check(p.returncode == 6 and "the console line STACK_EMULATOR_READY" in p.stderr,
          f"an exact marker matched a longer line: {p.returncode} {p.stderr}")
    check("STACK_EMULATOR_READY uptime=" in p.stderr, f"the last lines were not shown: {p.stderr}")


SCENARIOS = {
    "lifecycle": scenario_lifecycle,
    "fail": scenario_fail,
    "panic": scenario_panic,
    "warm": scenario_warm,
    "arch": scenario_arch,
    "exact": scenario_exact,
}


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    stackemu = os.path.abspath(sys.argv[1])
    names = sys.argv[2:] or list(SCENARIOS)
    guest = Guest()
    return run_scenarios(names, "stackemu-byoi", lambda tmp: Instance(stackemu, None, tmp),
                         lambda name, inst, tmp: SCENARIOS[name](inst, guest, tmp))


if __name__ == "__main__":
    sys.exit(main())
