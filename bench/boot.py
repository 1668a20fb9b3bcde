#!/usr/bin/env python3
"""Where a cold boot's time goes, from the guest's own accounts. Prints JSON.

Usage: bench/boot.py STACKEMU --image QCOW2 [--runs N] [--ram MIB] [--cpus N] [--top K]

Each run is a `stackemu start --cold --json` on a fresh instance, then, through the guest
agent once the start is ready:
  host      stackemu's phases (launch, first console byte, agent, probes, ready marker)
  kernel    the kernel log's milestones, in seconds since the kernel started: /init run (the
            initrd), the root file system mounted, systemd running, its first job queued (its
            generators and unit loading done)
  systemd   `systemd-analyze time` (kernel, initrd, userspace; after `systemctl
            is-system-running --wait`), the K slowest units (`systemd-analyze blame`) and the
            critical chain of the default target
then a `stop --json` (its time and rung). The summary gives the p50 of every figure over the
runs. A guest without systemd (the busybox test guest) gets the host and kernel parts only.
Issue 14's cold-start goal: p50 <= 10 s for the demo image at its recommended size under TCG.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# Kernel log lines that mark the boot's stages, by the name the JSON gives them.
KERNEL_MILESTONES = {
    "init_started_s": re.compile(r"Run /init as init process|Run /sbin/init as init process"),
    "root_mounted_s": re.compile(r"EXT4-fs \(vda\): mounted filesystem"),
    "systemd_running_s": re.compile(r"systemd\[1\]: systemd \d+"),
    "systemd_first_job_s": re.compile(r"systemd\[1\]: Queued start job"),
}
DMESG_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]")
# systemd's time spans: "1min 18.148s", "17.710s", "845ms", "2h 3min 4.5s".
SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)(h|min|ms|us|s)\b")
SPAN_UNIT_S = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def note(msg):
    print(f"bench/boot: {msg}", file=sys.stderr, flush=True)


def span_seconds(text):
    """Seconds in a systemd time span, None when there is none."""
    parts = SPAN_PART.findall(text)
    if not parts:
        return None
    return round(sum(float(n) * SPAN_UNIT_S[u] for n, u in parts), 3)


def parse_analyze_time(text):
    """`systemd-analyze time`: Startup finished in 17.7s (kernel) + 1.2s (initrd) + 1min 18s
    (userspace) = ..."""
    out = {}
    m = re.search(r"Startup finished in (.*?) =", text)
    if not m:
        return out
    for part in m.group(1).split(" + "):
        pm = re.match(r"(.*) \((\w+)\)$", part.strip())
        if pm:
            out[pm.group(2) + "_s"] = span_seconds(pm.group(1))
    return out


def parse_blame(text, top):
    units = []
    for line in text.splitlines():
        m = re.match(r"\s*(.+?)\s+(\S+\.(?:service|mount|device|socket|target|swap|timer|path|"
                     r"slice|scope|automount))\s*$", line)
        if m and span_seconds(m.group(1)) is not None:
            units.append({"unit": m.group(2), "s": span_seconds(m.group(1))})
        if len(units) == top:
            break
    return units


def parse_kernel(dmesg):
    out = {}
    for line in dmesg.splitlines():
        t = DMESG_TIME.match(line)
        if not t:
            continue
        for name, pattern in KERNEL_MILESTONES.items():
            if name not in out and pattern.search(line):
                out[name] = float(t.group(1))
    return out


class Instance:
    def __init__(self, stackemu, image, args):
        self.stackemu = stackemu
        self.image = image
        self.tmp = tempfile.mkdtemp(prefix="stackemu-bench-boot-")
        self.env = dict(os.environ, EMULATOR_RUN_DIR=os.path.join(self.tmp, "run"),
                        EMULATOR_IMAGE_DIR=os.path.join(self.tmp, "images"))
        self.env.pop("EMULATOR_NAME", None)
        self.size = []
        if args.ram:
            self.size += ["--ram", str(args.ram)]
        if args.cpus:
            self.size += ["--cpus", str(args.cpus)]

    def run(self, *argv, timeout=120):
        return subprocess.run([self.stackemu, *argv], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def guest(self, *argv, timeout=180):
        """A command's stdout in the guest, or None when it could not run or failed."""
        p = self.run("exec", "--timeout", str(timeout), "--", *argv, timeout=timeout + 30)
        return p.stdout if p.returncode == 0 else None

    def cleanup(self):
        self.run("stop", "--stop-timeout", "30", timeout=300)
        shutil.rmtree(self.tmp, ignore_errors=True)


def one_run(stackemu, image, args):
    inst = Instance(stackemu, image, args)
    try:
        p = inst.run("start", "--image", image, "--cold", "--json", *inst.size, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"start failed ({p.returncode}): {p.stderr[-1500:]}")
        started = json.loads(p.stdout)
        run = {"start_total_s": round(started["total_ms"] / 1000, 3),
               "host_phases_s": {ph["phase"]: round(ph["ms"] / 1000, 3)
                                 for ph in started.get("phases", [])},
               "ram_mib": started.get("ram_mib"), "cpus": started.get("cpus")}
        run["kernel"] = parse_kernel(inst.guest("dmesg") or "")
        if inst.guest("sh", "-c", "command -v systemd-analyze") is not None:
            # The boot is finished when no job is left; only then has systemd its figures.
            inst.guest("systemctl", "is-system-running", "--wait", timeout=600)
            run["systemd"] = parse_analyze_time(inst.guest("systemd-analyze", "time") or "")
            run["slowest_units"] = parse_blame(
                inst.guest("systemd-analyze", "blame", "--no-pager") or "", args.top)
            chain = inst.guest("systemd-analyze", "critical-chain", "--no-pager") or ""
            run["critical_chain"] = [line.rstrip() for line in chain.splitlines()
                                     if re.search(r"[@+]\d", line)]
        p = inst.run("stop", "--json", timeout=600)
        if p.returncode == 0:
            stopped = json.loads(p.stdout)
            run["stop_s"] = round(stopped["total_ms"] / 1000, 3)
            run["stop_rung"] = stopped.get("rung")
        return run
    finally:
        inst.cleanup()


def p50(values):
    v = sorted(x for x in values if x is not None)
    return v[len(v) // 2] if v else None


def summarise(runs, top):
    summary = {"start_total_s": p50(r["start_total_s"] for r in runs),
               "stop_s": p50(r.get("stop_s") for r in runs)}
    for part in ("host_phases_s", "kernel", "systemd"):
        keys = sorted({k for r in runs for k in r.get(part, {})})
        if keys:
            summary[part] = {k: p50(r.get(part, {}).get(k) for r in runs) for k in keys}
    units = {}
    for r in runs:
        for u in r.get("slowest_units", []):
            units.setdefault(u["unit"], []).append(u["s"])
    if units:
        ranked = sorted(units.items(), key=lambda kv: -p50(kv[1]))
        summary["slowest_units_p50_s"] = {u: p50(v) for u, v in ranked[:top]}
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stackemu")
    ap.add_argument("--image", required=True, help="the image's qcow2 (its manifest beside it)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ram", type=int, help="MiB (default: the image's recommendation)")
    ap.add_argument("--cpus", type=int, help="vCPUs (default: the image's recommendation)")
    ap.add_argument("--top", type=int, default=15, help="how many of the slowest units")
    args = ap.parse_args()
    if args.runs < 1 or args.top < 1:
        ap.error("--runs and --top must be at least 1")
    if not os.path.exists(args.image):
        ap.error(f"no image at {args.image}: build one with `stackemu build-image`")
    runs = []
    t0 = time.monotonic()
    for i in range(args.runs):
        run = one_run(args.stackemu, os.path.abspath(args.image), args)
        note(f"run {i + 1}/{args.runs}: start {run['start_total_s']} s, "
             f"systemd {run.get('systemd', {})}")
        runs.append(run)
    print(json.dumps({"image": os.path.abspath(args.image), "runs": runs,
                      "p50": summarise(runs, args.top),
                      "load_avg_1min": os.getloadavg()[0],
                      "wall_s": round(time.monotonic() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
