#!/usr/bin/env python3
"""End-to-end: `stackemu snapshot` on real QEMU (TCG) with the test guest.

Usage: tests/e2e/snapshot_e2e.py STACKEMU [SCENARIO...]   (default: all)
Scenarios:
  live          save, change RAM (/tmp) and disk (/data) through the guest agent, load, check
                both went back; list, exit codes (exists 5, missing 3, bad name 2), delete
  offline       a live snapshot listed while stopped; disk-only save/load/delete with qemu-img;
                the disk really goes back; a disk-only snapshot refused by the running VM (4)
  incompatible  saved with --ram 512, refused at once (4, naming RAM) after a start with 640
Each scenario uses its own run directory and free host ports, and makes sure no QEMU of its
own is left running. Exit status 0 when every scenario passed.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_e2e  # noqa: E402
from cli_e2e import BUILD_GUEST, Failure, check  # noqa: E402


def log(msg):
    print(f"snapshot_e2e: {msg}", flush=True)


class Agent:
    """A minimal qemu-ga client on the instance's agent socket (one connection at a time)."""

    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + timeout
        self.file = None
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.settimeout(10)
                self.sock.connect(path)
                self.file = self.sock.makefile("rwb")
                self.sync()
                return
            except (OSError, Failure) as e:
                self.close()
                if time.monotonic() > deadline:
                    raise Failure(f"the guest agent at {path} did not answer: {e}")
                time.sleep(0.5)

    def close(self):
        # The file object holds the descriptor too: QEMU serves one agent client at a time.
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None
        self.sock.close()

    def sync(self):
        token = int(time.time() * 1000) % 2**31
        # 0xff first: the agent drops any partial input (qemu-ga's delimited sync).
        self.file.write(b"\xff")
        self.file.write(json.dumps({"execute": "guest-sync-delimited",
                                    "arguments": {"id": token}}).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise Failure("the agent closed the connection")
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue
            if reply.get("return") == token:
                return

    def call(self, name, **args):
        self.file.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.file.flush()
        reply = json.loads(self.file.readline())
        if "error" in reply:
            raise Failure(f"agent {name}: {reply['error']}")
        return reply["return"]

    def write(self, path, text):
        h = self.call("guest-file-open", path=path, mode="w")
        self.call("guest-file-write", handle=h, **{"buf-b64": base64.b64encode(text.encode()).decode()})
        self.call("guest-file-flush", handle=h)
        self.call("guest-file-close", handle=h)

    def read(self, path):
        h = self.call("guest-file-open", path=path, mode="r")
        r = self.call("guest-file-read", handle=h, count=4096)
        self.call("guest-file-close", handle=h)
        return base64.b64decode(r["buf-b64"]).decode()


class Instance(cli_e2e.Instance):
    """cli_e2e's instance (run directory, free ports, QEMU clean-up) plus snapshot helpers."""

    def snap(self, *args):
        """`stackemu snapshot ARGS --json`: (exit code, parsed stdout, stderr, seconds)."""
        p, elapsed = self.run("snapshot", *args, "--json")
        try:
            out = json.loads(p.stdout)
        except json.JSONDecodeError:
            raise Failure(f"snapshot {' '.join(args)} printed no JSON: {p.stdout!r} {p.stderr!r}")
        check(out.get("exit_code") == p.returncode,
              f"the JSON exit_code {out.get('exit_code')} differs from {p.returncode}")
        return p.returncode, out, p.stderr, elapsed

    def listed(self):
        code, out, err, _ = self.snap("list")
        check(code == 0, f"snapshot list failed: {err}")
        return out, {s["name"]: s for s in out["snapshots"]}

    def start(self, ram="512"):
        p, elapsed = self.run("start", "--image", self.image, "--ram", ram, "--cpus", "1",
                              "--quiet")
        check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")
        return elapsed

    def stop(self):
        p, _ = self.run("stop")
        check(p.returncode == 0, f"stop was not clean: {p.stdout} {p.stderr}")
        check(not self.qemu_pids(), "QEMU still runs after stop")

    def agent(self):
        return Agent(os.path.join(self.run_dir, "vm", "qga.sock"))


def scenario_live(inst):
    inst.start()
    a = inst.agent()
    a.write("/tmp/marker", "before")
    a.write("/data/marker", "before")
    a.close()

    code, out, err, secs = inst.snap("save", "clean")
    check(code == 0, f"live save failed: {err}")
    check(out["running"] and out["vm_state"] and out["method"] == "qmp-job",
          f"live save result: {out}")
    log(f"live save: {out['total_ms']:.0f} ms (job {out['job_ms']:.0f} ms), "
        f"RAM state {out['vm_state_size'] / 2**20:.1f} MiB")

    a = inst.agent()
    a.write("/tmp/marker", "after")
    a.write("/data/marker", "after")
    check(a.read("/tmp/marker") == "after", "the guest did not take the change")
    a.close()

    _, snaps = inst.listed()
    check("clean" in snaps, f"list lacks clean: {snaps}")
    s = snaps["clean"]
    check(s["vm_state"] and s["vm_state_size"] > 0 and s["compatible"] is True,
          f"list entry: {s}")
    check(s["vm_clock_ns"] > 0 and s["date_sec"] > 0, f"no guest clock or date: {s}")

    code, out, err, secs = inst.snap("load", "clean")
    check(code == 0, f"live load failed: {err}")
    check(out["qemu_status"] == "running", f"the VM does not run after the load: {out}")
    log(f"live load: {out['total_ms']:.0f} ms (job {out['job_ms']:.0f} ms)")

    a = inst.agent()
    tmp_marker, data_marker = a.read("/tmp/marker"), a.read("/data/marker")
    a.close()
    check(tmp_marker == "before", f"RAM (/tmp) did not go back: {tmp_marker!r}")
    check(data_marker == "before", f"the disk (/data) did not go back: {data_marker!r}")

    p, _ = inst.run("status", "--json")
    check(p.returncode == 0, f"status after the load: {p.returncode} {p.stdout}")

    code, out, err, _ = inst.snap("save", "clean")
    check(code == 5 and out["error"]["code"] == "already_exists", f"save over: {code} {err}")
    code, out, err, _ = inst.snap("load", "missing")
    check(code == 3, f"load of a missing snapshot: {code} {err}")
    code, out, err, _ = inst.snap("save", "bad name")
    check(code == 2, f"a bad name: {code} {err}")
    code, out, err, _ = inst.snap("delete", "clean")
    check(code == 0, f"live delete failed: {err}")
    _, snaps = inst.listed()
    check(not snaps, f"snapshots left after delete: {snaps}")
    inst.stop()


def scenario_offline(inst):
    inst.start()
    a = inst.agent()
    a.write("/data/marker", "A")
    a.close()
    code, out, err, _ = inst.snap("save", "live1")
    check(code == 0, f"live save failed: {err}")
    inst.stop()

    listing, snaps = inst.listed()
    check(not listing["running"], "list says running after stop")
    check("live1" in snaps and snaps["live1"]["vm_state"] and snaps["live1"]["compatible"] is True,
          f"the live snapshot as listed offline: {snaps}")

    code, out, err, _ = inst.snap("save", "off1")
    check(code == 0 and out["method"] == "qemu-img" and not out["vm_state"] and not out["running"],
          f"offline save: {code} {out} {err}")
    _, snaps = inst.listed()
    check("off1" in snaps and not snaps["off1"]["vm_state"] and snaps["off1"]["compatible"] is True,
          f"the offline snapshot as listed: {snaps}")

    # Change the disk, then bring it back offline.
    inst.start()
    a = inst.agent()
    check(a.read("/data/marker") == "A", "the disk lost the marker across a restart")
    a.write("/data/marker", "B")
    a.close()
    code, out, err, _ = inst.snap("load", "off1")
    check(code == 4 and "disk-only" in err, f"a disk-only load into the running VM: {code} {err}")
    inst.stop()
    code, out, err, _ = inst.snap("load", "off1")
    check(code == 0 and out["method"] == "qemu-img", f"offline load failed: {code} {err}")
    inst.start()
    a = inst.agent()
    marker = a.read("/data/marker")
    a.close()
    check(marker == "A", f"the disk did not go back offline: {marker!r}")
    inst.stop()

    code, out, err, _ = inst.snap("delete", "off1")
    check(code == 0, f"offline delete: {code} {err}")
    code, out, err, _ = inst.snap("delete", "off1")
    check(code == 3, f"deleting it again: {code} {err}")
    code, out, err, _ = inst.snap("delete", "live1")
    check(code == 0, f"offline delete of the live snapshot: {code} {err}")
    _, snaps = inst.listed()
    check(not snaps, f"snapshots left: {snaps}")


def scenario_incompatible(inst):
    inst.start()
    code, out, err, _ = inst.snap("save", "s512")
    check(code == 0, f"save failed: {err}")
    inst.stop()
    inst.start(ram="640")
    code, out, err, secs = inst.snap("load", "s512")
    check(code == 4, f"an incompatible load was not refused: {code} {out} {err}")
    check("RAM (MiB): snapshot 512, this VM 640" in err, f"the refusal does not name RAM: {err}")
    check(secs < 5, f"the refusal took {secs:.1f} s")
    _, snaps = inst.listed()
    s = snaps["s512"]
    check(s["compatible"] is False and [d["field"] for d in s["differences"]] == ["RAM (MiB)"],
          f"list does not show the difference: {s}")
    p, _ = inst.run("status", "--json")
    check(p.returncode == 0, "the VM is not healthy after the refused load")
    inst.stop()


SCENARIOS = {
    "live": scenario_live,
    "offline": scenario_offline,
    "incompatible": scenario_incompatible,
}


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    stackemu = os.path.abspath(sys.argv[1])
    names = sys.argv[2:] or list(SCENARIOS)
    guest = subprocess.run([BUILD_GUEST], capture_output=True, text=True, check=True)
    image = os.path.join(guest.stdout.strip().splitlines()[-1], "test-guest.qcow2")
    failed = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"stackemu-snap-{name}-") as tmp:
            inst = Instance(stackemu, image, tmp)
            try:
                log(f"--- {name}")
                SCENARIOS[name](inst)
                log(f"--- {name}: passed")
            except (Failure, subprocess.TimeoutExpired, json.JSONDecodeError, OSError,
                    KeyError) as e:
                log(f"--- {name}: FAILED: {e!r}")
                failed.append(name)
            finally:
                inst.cleanup()
    if failed:
        log(f"failed: {' '.join(failed)}")
        return 1
    log("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
