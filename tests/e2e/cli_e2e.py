#!/usr/bin/env python3
"""End-to-end: the stackemu CLI on real QEMU (TCG) with the test guest.

Usage: tests/e2e/cli_e2e.py STACKEMU [SCENARIO...]   (default: all)
Scenarios: lifecycle fail panic crash warm security
Each scenario uses its own run directory and free host ports, and makes sure no QEMU of its
own is left running. Exit status 0 when every scenario passed.
"""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_GUEST = os.path.join(REPO, "scripts", "build-test-guest")


def log(msg):
    print(f"cli_e2e: {msg}", flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Instance:
    def __init__(self, stackemu, image, tmp):
        self.stackemu = stackemu
        self.image = image
        self.run_dir = os.path.join(tmp, "run")
        ports = free_ports(4)
        self.env = dict(os.environ)
        self.env.update({
            "EMULATOR_RUN_DIR": self.run_dir,
            "EMULATOR_DASHBOARD_PORT": str(ports[0]),
            "EMULATOR_BACKEND_PORT": str(ports[1]),
            "EMULATOR_MINIO_PORT": str(ports[2]),
            "EMULATOR_INBUCKET_PORT": str(ports[3]),
            "EMULATOR_READY_TIMEOUT": "120",
        })
        self.env.pop("EMULATOR_QEMU", None)
        self.env.pop("EMULATOR_NAME", None)
        self.backend_port = ports[1]

    def run(self, *args, timeout=180):
        t0 = time.monotonic()
        p = subprocess.run([self.stackemu, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        elapsed = time.monotonic() - t0
        log(f"stackemu {' '.join(args)} -> {p.returncode} in {elapsed:.2f}s")
        return p, elapsed

    def start(self, *extra):
        return self.run("start", "--image", self.image, "--ram", "512", "--cpus", "1", *extra)

    def status(self):
        p, _ = self.run("status", "--json")
        return p.returncode, json.loads(p.stdout)

    def qemu_pids(self):
        """QEMU processes whose command line names this run directory."""
        pids = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if self.run_dir in cmd and "qemu-system" in cmd:
                pids.append(int(pid))
        return pids

    def cleanup(self):
        for pid in self.qemu_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def scenario_lifecycle(inst):
    p, elapsed = inst.start("--json")
    check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")
    out = json.loads(p.stdout)
    check(out["ready"], "start did not report ready")
    log(f"ready in {out['total_ms']:.0f} ms; accelerator: {out['accelerator']}")
    body = urllib.request.urlopen(f"http://127.0.0.1:{inst.backend_port}/health?db=1",
                                  timeout=10).read()
    check(len(body) > 0, "the forwarded backend port gave no body")
    code, st = inst.status()
    check(code == 0 and st["state"] == "ready", f"status after start: {code} {st}")
    # A second start on a running instance starts nothing.
    p, _ = inst.start()
    check(p.returncode == 0 and "already running" in p.stdout, f"second start: {p.stdout}")
    check(len(inst.qemu_pids()) == 1, "a second QEMU appeared")
    p, _ = inst.run("stop", "--json")
    check(p.returncode == 0, f"stop was not clean: {p.stdout} {p.stderr}")
    stop = json.loads(p.stdout)
    check(stop["clean"] and stop["rung"] in ("agent-shutdown", "powerdown"),
          f"stop did not end on the first rung: {stop}")
    log(f"stopped on rung {stop['rung']} in {stop['total_ms']:.0f} ms")
    p, _ = inst.run("events", "--json")
    shutdowns = [json.loads(l) for l in p.stdout.splitlines() if '"SHUTDOWN"' in l]
    check(shutdowns and shutdowns[-1]["data"]["reason"] == "guest-shutdown",
          f"no SHUTDOWN guest-shutdown in the events: {shutdowns}")
    code, st = inst.status()
    check(code == 3 and st["state"] == "stopped", f"status after stop: {code} {st}")
    check(not inst.qemu_pids(), "QEMU still runs after stop")
    check(os.path.exists(os.path.join(inst.run_dir, "vm", "serial.log")), "serial.log was deleted")


def scenario_fail(inst):
    p, elapsed = inst.start("--append", "stackemu.mode=fail")
    check(p.returncode == 6, f"start with a failure marker exited {p.returncode}")
    check("STACK_CLOUD_INIT_FAILED" in p.stderr, f"the failure was not reported: {p.stderr}")
    check("console lines" in p.stderr, "the last console lines were not printed")
    check(not inst.qemu_pids(), "the failed VM was left running")
    code, st = inst.status()
    check(code == 6 and st["state"] == "failed", f"status after a failed start: {code} {st}")


def scenario_panic(inst):
    p, _ = inst.start("--append", "stackemu.mode=panic")
    check(p.returncode == 6, f"start with a panicking guest exited {p.returncode}")
    check("panick" in p.stderr, f"the panic was not reported: {p.stderr}")
    check(not inst.qemu_pids(), "the panicked VM was left running")


def scenario_crash(inst):
    p, _ = inst.start()
    check(p.returncode == 0, f"start failed: {p.stderr}")
    pids = inst.qemu_pids()
    check(len(pids) == 1, f"expected one QEMU, found {pids}")
    os.kill(pids[0], signal.SIGKILL)
    for _ in range(100):
        if not inst.qemu_pids():
            break
        time.sleep(0.05)
    code, st = inst.status()
    check(code == 6 and st["state"] == "crashed", f"status after kill -9: {code} {st}")
    # The next start clears the stale sockets and boots again.
    p, _ = inst.start()
    check(p.returncode == 0, f"start after a crash failed: {p.stderr}")
    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop after the restart was not clean: {p.stdout}")


def scenario_warm(inst):
    p, _ = inst.start()
    check(p.returncode == 0, f"start failed: {p.stderr}")
    p, _ = inst.run("snapshot", "save", "stackemu-ready")
    check(p.returncode == 0, f"saving the ready state failed: {p.stdout} {p.stderr}")
    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop failed: {p.stdout}")
    p, elapsed = inst.start("--json")
    check(p.returncode == 0, f"warm start failed: {p.stderr}")
    out = json.loads(p.stdout)
    check(out["warm"], f"start did not use the ready state: {out}")
    log(f"warm start ready in {out['total_ms']:.0f} ms")
    body = urllib.request.urlopen(f"http://127.0.0.1:{inst.backend_port}/health?db=1",
                                  timeout=10).read()
    check(len(body) > 0, "the forwarded backend port gave no body after a warm start")
    # What the guest writes after a warm start survives stop -> start: stop saves the state
    # afresh, so the next start resumes it instead of discarding the write.
    p, _ = inst.run("exec", "--", "sh", "-c", "echo kept-across-stop > /data/warm-check && sync")
    check(p.returncode == 0, f"writing in the guest failed: {p.stdout} {p.stderr}")
    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop after a warm start was not clean: {p.stdout}")
    p, _ = inst.start("--json")
    check(p.returncode == 0 and json.loads(p.stdout)["warm"], f"second warm start: {p.stdout}")
    p, _ = inst.run("exec", "--", "cat", "/data/warm-check")
    check(p.returncode == 0 and "kept-across-stop" in p.stdout,
          f"a write made before stop was lost by the warm start: {p.stdout} {p.stderr}")
    # A VM that ends without `stackemu stop` (here: killed) leaves a stale ready state: the
    # next start boots cold, keeping the disk, and says why.
    p, _ = inst.run("exec", "--", "sh", "-c", "echo after-save > /data/warm-check2 && sync")
    check(p.returncode == 0, f"writing in the guest failed: {p.stdout} {p.stderr}")
    for pid in inst.qemu_pids():
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not inst.qemu_pids():
            break
        time.sleep(0.05)
    p, _ = inst.start("--json")
    out = json.loads(p.stdout) if p.returncode == 0 else {}
    check(p.returncode == 0 and not out["warm"] and "older than the disk" in out["warm_note"],
          f"a stale ready state was used: {p.stdout} {p.stderr}")
    p, _ = inst.run("exec", "--", "cat", "/data/warm-check2")
    check(p.returncode == 0 and "after-save" in p.stdout,
          f"the cold boot lost a write: {p.stdout} {p.stderr}")
    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop after the cold boot was not clean: {p.stdout}")
    # --cold boots from scratch although the state fits.
    p, _ = inst.start("--json", "--cold")
    check(p.returncode == 0 and not json.loads(p.stdout)["warm"], "--cold used the ready state")
    inst.run("stop")
    # A VM that does not fit the saved state (more RAM) boots cold and says why.
    p, _ = inst.run("start", "--image", inst.image, "--ram", "640", "--cpus", "1", "--json")
    check(p.returncode == 0, f"start with another RAM size failed: {p.stderr}")
    out = json.loads(p.stdout)
    check(not out["warm"] and "RAM" in out["warm_note"], f"incompatible state not refused: {out}")
    inst.run("stop")


def listening(pid, proto):
    """(address, port) of every socket process `pid` listens on, from `ss` (proto "t" or "u")."""
    out = subprocess.run(["ss", f"-l{proto}npH"], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[3]  # State Recv-Q Send-Q Local:Port Peer:Port Process
        address, _, port = local.rpartition(":")
        found.append((address, int(port)))
    return found


def scenario_security(inst):
    p, _ = inst.start()
    check(p.returncode == 0, f"start failed: {p.stderr}")
    pids = inst.qemu_pids()
    check(len(pids) == 1, f"expected one QEMU, found {pids}")
    pid = pids[0]
    # Every socket QEMU listens on is on 127.0.0.1: the four forwards and nothing else.
    tcp = listening(pid, "t")
    log(f"QEMU listens on {tcp}")
    check(tcp and all(address == "127.0.0.1" for address, _ in tcp),
          f"QEMU listens beyond 127.0.0.1: {tcp}")
    ports = sorted(int(inst.env[v]) for v in ("EMULATOR_DASHBOARD_PORT", "EMULATOR_BACKEND_PORT",
                                               "EMULATOR_MINIO_PORT", "EMULATOR_INBUCKET_PORT"))
    check(sorted(port for _, port in tcp) == ports, f"listening ports {tcp}, forwards {ports}")
    udp = listening(pid, "u")
    check(all(address == "127.0.0.1" for address, _ in udp), f"UDP beyond 127.0.0.1: {udp}")
    # The command line agrees, and exports nothing of the host's file system.
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    rules = [r for a in argv for r in a.split(",") if r.startswith("hostfwd=")]
    check(len(rules) == 4 and all(r.startswith("hostfwd=tcp:127.0.0.1:") for r in rules),
          f"host forwards: {rules}")
    check(not any(a in ("-virtfs", "-fsdev") or "vhost-user-fs" in a for a in argv),
          f"a host directory is exported: {argv}")
    # The run directory is private, its sockets too (QEMU's daemon umask is 027).
    vm = os.path.join(inst.run_dir, "vm")
    for d in (inst.run_dir, vm):
        mode = os.stat(d).st_mode & 0o7777
        check(mode == 0o700, f"{d} has mode {mode:o}")
    for name in ("qmp.sock", "monitor.sock", "serial.sock", "qga.sock"):
        st = os.stat(os.path.join(vm, name))
        check(stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o7777 == 0o600,
              f"{name} has mode {st.st_mode & 0o7777:o}")
    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop was not clean: {p.stdout} {p.stderr}")


SCENARIOS = {
    "lifecycle": scenario_lifecycle,
    "fail": scenario_fail,
    "panic": scenario_panic,
    "crash": scenario_crash,
    "warm": scenario_warm,
    "security": scenario_security,
}


def run_scenarios(names, prefix, make_instance, run_one):
    """Runs each named scenario in its own temporary directory and instance; 0 when all pass.

    make_instance(tmp) gives the Instance; run_one(name, inst, tmp) runs the scenario.
    """
    failed = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-{name}-") as tmp:
            inst = make_instance(tmp)
            try:
                log(f"--- {name}")
                run_one(name, inst, tmp)
                log(f"--- {name}: passed")
            except (Failure, subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as e:
                log(f"--- {name}: FAILED: {e}")
                failed.append(name)
            finally:
                inst.cleanup()
    if failed:
        log(f"failed: {' '.join(failed)}")
        return 1
    log("all passed")
    return 0


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    stackemu = os.path.abspath(sys.argv[1])
    names = sys.argv[2:] or list(SCENARIOS)
    guest = subprocess.run([BUILD_GUEST], capture_output=True, text=True, check=True)
    image = os.path.join(guest.stdout.strip().splitlines()[-1], "test-guest.qcow2")
    return run_scenarios(names, "stackemu-e2e", lambda tmp: Instance(stackemu, image, tmp),
                         lambda name, inst, tmp: SCENARIOS[name](inst))


if __name__ == "__main__":
    sys.exit(main())
