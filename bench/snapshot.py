#!/usr/bin/env python3
"""Snapshot benchmarks of the stackemu CLI on real QEMU (TCG) with the test guest (or --image,
e.g. the demo image). Prints JSON.

Usage: bench/snapshot.py STACKEMU [--runs N] [--ram MIB] [--image QCOW2]

Live `stackemu snapshot save` and `stackemu snapshot load` (wall time of the command, from exec
to exit) next to the same QMP jobs issued in the same run by a bare client on the VM's second
QMP monitor (monitor.sock): connect, negotiate, snapshot-save/-load, wait for `concluded`,
query-jobs, job-dismiss. The two alternate (which goes first flips every run) so that both
see the same guest and the same snapshot table; one unmeasured round of each warms up the
page cache (the first load after a save is often twice as slow, for either side).
Target from issue 5: the controller's overhead over the bare jobs <= 10 % (p50 against p50).
Besides that comparison, `controller_ms` is each stackemu run's wall time minus its own job
time (its `job_ms`): what stackemu adds, without the jobs' run-to-run noise.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def p50(values):
    v = sorted(values)
    return v[len(v) // 2] if v else None


def stats(values):
    v = sorted(values)
    if not v:
        return {}
    return {"n": len(v), "min": round(v[0], 1), "p50": round(p50(v), 1), "max": round(v[-1], 1)}


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


class BareQMP:
    """The least a client must do to run a snapshot job over QMP."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def close(self):
        self.file.close()
        self.sock.close()

    def _read(self):
        line = self.file.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def _send(self, name, args=None):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()

    def execute(self, name, args=None, events=None):
        self._send(name, args)
        while True:
            m = self._read()
            if "event" in m:
                if events is not None:
                    events.append(m)
                continue
            if "error" in m:
                raise RuntimeError(f"{name}: {m['error']}")
            return m["return"]

    def job(self, command, args):
        events = []
        self.execute(command, args, events)
        job_id = args["job-id"]

        def concluded(e):
            return (e.get("event") == "JOB_STATUS_CHANGE" and e["data"]["id"] == job_id and
                    e["data"]["status"] == "concluded")

        while not any(concluded(e) for e in events):
            m = self._read()
            if "event" in m:
                events.append(m)
        jobs = self.execute("query-jobs")
        error = next((j.get("error") for j in jobs if j["id"] == job_id), None)
        self.execute("job-dismiss", {"id": job_id})
        if error:
            raise RuntimeError(f"{command}: {error}")


def bare_job(monitor, command, tag, job_id):
    t0 = time.monotonic()
    q = BareQMP(monitor)
    args = {"job-id": job_id, "tag": tag, "devices": ["disk0"]}
    if command != "snapshot-delete":
        args["vmstate"] = "disk0"
    q.job(command, args)
    q.close()
    return (time.monotonic() - t0) * 1000


def cli(stackemu, env, *args):
    t0 = time.monotonic()
    p = subprocess.run([stackemu, *args], env=env, capture_output=True, text=True)
    ms = (time.monotonic() - t0) * 1000
    if p.returncode != 0:
        raise RuntimeError(f"stackemu {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return ms, (json.loads(p.stdout) if "--json" in args else None)


def qemu_pids(run_dir):
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if run_dir in cmd and "qemu-system" in cmd:
            pids.append(int(pid))
    return pids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stackemu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ram", default="512")
    ap.add_argument("--image")
    a = ap.parse_args()
    stackemu = os.path.abspath(a.stackemu)
    image = a.image
    if not image:
        guest = subprocess.run([os.path.join(REPO, "scripts", "build-test-guest")],
                               capture_output=True, text=True, check=True)
        image = os.path.join(guest.stdout.strip().splitlines()[-1], "test-guest.qcow2")

    with tempfile.TemporaryDirectory(prefix="stackemu-bench-snap-") as tmp:
        run_dir = os.path.join(tmp, "run")
        ports = free_ports(4)
        env = dict(os.environ)
        env.update({"EMULATOR_RUN_DIR": run_dir,
                    "EMULATOR_DASHBOARD_PORT": str(ports[0]),
                    "EMULATOR_BACKEND_PORT": str(ports[1]),
                    "EMULATOR_MINIO_PORT": str(ports[2]),
                    "EMULATOR_INBUCKET_PORT": str(ports[3])})
        env.pop("EMULATOR_QEMU", None)
        env.pop("EMULATOR_NAME", None)
        monitor = os.path.join(run_dir, "vm", "monitor.sock")
        out = {"runs": a.runs, "guest": f"{os.path.basename(image)}, {a.ram} MiB, 1 vCPU, TCG",
               "target": "stackemu p50 <= 1.10 x bare p50"}
        try:
            cli(stackemu, env, "start", "--image", image, "--ram", a.ram, "--cpus", "1",
                "--accel", "tcg", "--quiet")
            save = {"stackemu": [], "stackemu_job": [], "bare": []}
            load = {"stackemu": [], "stackemu_job": [], "bare": []}
            # Warm-up, not measured.
            bare_job(monitor, "snapshot-save", "warm-bare", "b-warm-s")
            cli(stackemu, env, "snapshot", "save", "warm-cli")
            bare_job(monitor, "snapshot-load", "warm-bare", "b-warm-l")
            cli(stackemu, env, "snapshot", "load", "warm-cli")
            bare_job(monitor, "snapshot-delete", "warm-bare", "b-warm-d")
            cli(stackemu, env, "snapshot", "delete", "warm-cli")
            for i in range(a.runs):
                order = ["bare", "stackemu"] if i % 2 == 0 else ["stackemu", "bare"]
                for who in order:
                    tag = f"{who}-{i}"
                    if who == "bare":
                        save["bare"].append(bare_job(monitor, "snapshot-save", tag, f"b-s{i}"))
                        bare_job(monitor, "snapshot-delete", tag, f"b-d{i}")
                    else:
                        ms, j = cli(stackemu, env, "snapshot", "save", tag, "--json")
                        save["stackemu"].append(ms)
                        save["stackemu_job"].append(j["job_ms"])
                        cli(stackemu, env, "snapshot", "delete", tag)
            cli(stackemu, env, "snapshot", "save", "base")
            bare_job(monitor, "snapshot-load", "base", "b-warm-l2")
            cli(stackemu, env, "snapshot", "load", "base")
            for i in range(a.runs):
                order = ["bare", "stackemu"] if i % 2 == 0 else ["stackemu", "bare"]
                for who in order:
                    if who == "bare":
                        load["bare"].append(bare_job(monitor, "snapshot-load", "base", f"b-l{i}"))
                    else:
                        ms, j = cli(stackemu, env, "snapshot", "load", "base", "--json")
                        load["stackemu"].append(ms)
                        load["stackemu_job"].append(j["job_ms"])
            for name, figures in (("save", save), ("load", load)):
                s, b = p50(figures["stackemu"]), p50(figures["bare"])
                controller = [w - j for w, j in zip(figures["stackemu"], figures["stackemu_job"])]
                out[name] = {"stackemu_ms": stats(figures["stackemu"]),
                             "stackemu_job_ms": stats(figures["stackemu_job"]),
                             "controller_ms": stats(controller),
                             "bare_ms": stats(figures["bare"]),
                             "overhead_ms_p50": round(s - b, 1),
                             "overhead_pct_p50": round(100 * (s - b) / b, 1)}
            cli(stackemu, env, "stop", "--quiet")
        finally:
            for pid in qemu_pids(run_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
