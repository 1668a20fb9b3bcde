#!/usr/bin/env python3
"""Smoke test of the e2e test guest under QEMU TCG (one QEMU at a time).

Usage: tests/e2e/guest/smoke.py [SCENARIO...]   (default: all)
Scenarios: normal agent fail panic ignore-button slow disk
Each scenario boots the guest with scripts/run-test-guest --background, checks
the serial markers, HTTP through hostfwd, QMP events and the guest agent, then
makes sure QEMU is gone. Exit status 0 when every scenario passed.
"""
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
RUN = os.path.join(REPO, "scripts", "run-test-guest")
BUILD = os.path.join(REPO, "scripts", "build-test-guest")
READY = "STACK_EMULATOR_READY"
FAILED = "STACK_CLOUD_INIT_FAILED"


def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Qmp:
    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        greeting = self._read()
        assert "QMP" in greeting, greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name, "id": random.randrange(1 << 30)}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            m = self._read()
            if "event" in m:
                self.events.append(m)
            elif m.get("id") == msg["id"]:
                if "error" in m:
                    raise RuntimeError(f"{name}: {m['error']}")
                return m["return"]

    def wait_event(self, name, timeout):
        end = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                m = self._read()
            except (socket.timeout, EOFError):
                return None
            if "event" in m:
                self.events.append(m)

    def close(self):
        self.sock.close()


class Qga:
    def __init__(self, path):
        self.path = path
        self.sock = None

    def _connect(self):
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(self.path)

    def _recv_json(self, timeout):
        buf = b""
        self.sock.settimeout(timeout)
        while True:
            try:
                return json.loads(buf)
            except ValueError:
                pass
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("qga closed")
            buf += chunk

    def sync(self, timeout=60):
        self._connect()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            token = random.randrange(1 << 30)
            self.sock.sendall(b"\xff" + json.dumps(
                {"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode() + b"\n")
            self.sock.settimeout(2)
            data = b""
            try:
                while b"\xff" not in data:
                    data += self.sock.recv(65536)
                rest = data.split(b"\xff", 1)[1]
                while True:
                    try:
                        reply = json.loads(rest)
                        break
                    except ValueError:
                        rest += self.sock.recv(65536)
                if reply.get("return") == token:
                    return token
            except socket.timeout:
                continue
        raise TimeoutError("guest-sync-delimited: no answer")

    def cmd(self, name, timeout=10, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        r = self._recv_json(timeout)
        if "error" in r:
            raise RuntimeError(f"{name}: {r['error']}")
        return r["return"]

    def send_only(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def close(self):
        if self.sock:
            self.sock.close()


class Guest:
    def __init__(self, mode=None, delay=None, disk=None, append=None):
        self.gport = 26700
        self.hport = free_port()
        self.dir = tempfile.mkdtemp(prefix="sg.", dir="/tmp")
        args = [RUN, "--dir", self.dir, "--background",
                "--ports", f"{self.gport},26701,26702,26703",
                "--fwd", f"{self.hport}:{self.gport}"]
        if mode:
            args += ["--mode", mode]
        if delay is not None:
            args += ["--delay", str(delay)]
        if disk:
            args += ["--disk", disk]
        if append:
            args += ["--append", append]
        self.t0 = time.monotonic()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.dir, "qemu.pid")) as f:
            self.pid = int(f.read().strip())
        self.qmp = Qmp(os.path.join(self.dir, "qmp.sock"))

    def serial(self):
        try:
            with open(os.path.join(self.dir, "serial.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_line(self, marker, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lines = [l.strip("\r") for l in self.serial().split("\n")]
            if marker in lines:
                return time.monotonic() - self.t0
            time.sleep(0.02)
        raise TimeoutError(f"no line {marker!r} in {timeout}s; serial:\n{self.serial()}")

    def alive(self):
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def wait_exit(self, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.alive():
            time.sleep(0.05)
        return not self.alive()

    def http(self, path, port=None):
        url = f"http://127.0.0.1:{port or self.hport}{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()

    def stop(self):
        try:
            self.qmp.close()
        except Exception:
            pass
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            if not self.wait_exit(5):
                os.kill(self.pid, signal.SIGKILL)
                self.wait_exit(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def uptime_of(serial, needle):
    for line in serial.splitlines():
        if needle in line and "uptime" in line:
            return line.rsplit("uptime", 1)[1].strip().rstrip("s")
    return "?"


def scenario_normal(g):
    t = g.wait_line(READY)
    log(f"  ready marker: wall {t:.2f}s, guest uptime {uptime_of(g.serial(), 'http listening')}s")
    for path in ["/health?db=1", "/health", "/", "/minio/health/live", "/handler/sign-in"]:
        st, body = g.http(path)
        assert st == 200, (path, st)
    log(f"  GET /health?db=1 -> 200 {body.strip()}")
    t1 = time.monotonic()
    g.qmp.cmd("system_powerdown")
    ev = g.qmp.wait_event("SHUTDOWN", 10)
    assert ev and ev["data"]["reason"] == "guest-shutdown", ev
    log(f"  system_powerdown -> SHUTDOWN {ev['data']} after {time.monotonic() - t1:.2f}s")
    assert g.wait_exit(10), "qemu still running"


def scenario_agent(g):
    g.wait_line(READY)
    qga = Qga(os.path.join(g.dir, "qga.sock"))
    t1 = time.monotonic()
    qga.sync()
    log(f"  guest-sync-delimited ok ({time.monotonic() - t1:.2f}s after ready)")
    assert qga.cmd("guest-ping") == {}
    pid = qga.cmd("guest-exec", path="/bin/echo", arg=["hi"], **{"capture-output": True})["pid"]
    for _ in range(100):
        st = qga.cmd("guest-exec-status", pid=pid)
        if st["exited"]:
            break
        time.sleep(0.05)
    out = base64.b64decode(st.get("out-data", "")).decode()
    assert st["exitcode"] == 0 and out == "hi\n", st
    log(f"  guest-exec /bin/echo hi -> exit {st['exitcode']} out {out!r}")
    pid = qga.cmd("guest-exec", path="/bin/sh", arg=["-c", "echo $((6*7)) >&2; exit 3"],
                  **{"capture-output": True})["pid"]
    for _ in range(100):
        st = qga.cmd("guest-exec-status", pid=pid)
        if st["exited"]:
            break
        time.sleep(0.05)
    err = base64.b64decode(st.get("err-data", "")).decode()
    assert st["exitcode"] == 3 and err == "42\n", st
    log("  guest-exec /bin/sh -c ... -> exit 3, stderr '42'")
    h = qga.cmd("guest-file-open", path="/tmp/x", mode="w")
    qga.cmd("guest-file-write", handle=h, **{"buf-b64": base64.b64encode(b"data\n").decode()})
    qga.cmd("guest-file-close", handle=h)
    h = qga.cmd("guest-file-open", path="/tmp/x", mode="r")
    r = qga.cmd("guest-file-read", handle=h, count=100)
    qga.cmd("guest-file-close", handle=h)
    assert base64.b64decode(r["buf-b64"]) == b"data\n", r
    log("  guest-file-open/write/read/close ok")
    qga.cmd("guest-set-time", time=int(time.time() * 1e9))
    qga.cmd("guest-set-time")
    log(f"  guest-set-time ok; guest-get-time {qga.cmd('guest-get-time') / 1e9 - time.time():+.2f}s vs host")
    info = qga.cmd("guest-get-osinfo")
    log(f"  guest-get-osinfo: {info.get('pretty-name')} kernel {info.get('kernel-release')}")
    t1 = time.monotonic()
    qga.send_only("guest-shutdown")
    ev = g.qmp.wait_event("SHUTDOWN", 10)
    assert ev and ev["data"]["reason"] == "guest-shutdown", ev
    log(f"  guest-shutdown -> SHUTDOWN {ev['data']} after {time.monotonic() - t1:.2f}s")
    qga.close()
    assert g.wait_exit(10)


def scenario_fail(g):
    t = g.wait_line(FAILED)
    assert READY not in g.serial()
    log(f"  failure marker at wall {t:.2f}s; serial tail: "
        + " | ".join(g.serial().strip().splitlines()[-3:]))
    time.sleep(1)
    assert g.alive(), "guest must stay up"


def scenario_panic(g):
    ev = g.qmp.wait_event("GUEST_PANICKED", 120)
    assert ev, "no GUEST_PANICKED; serial:\n" + g.serial()
    log(f"  GUEST_PANICKED {ev['data']} at wall {time.monotonic() - g.t0:.2f}s")
    nxt = g.qmp.wait_event("SHUTDOWN", 3)
    log(f"  then SHUTDOWN: {nxt and nxt['data']}; status "
        + (str(g.qmp.cmd("query-status")) if g.alive() and not nxt else "qemu exited"))


def scenario_ignore_button(g):
    g.wait_line(READY)
    g.qmp.cmd("system_powerdown")
    assert g.qmp.wait_event("POWERDOWN", 5)
    assert g.qmp.wait_event("SHUTDOWN", 5) is None
    st, _ = g.http("/health")
    assert st == 200 and g.alive()
    log("  system_powerdown ignored (POWERDOWN, no SHUTDOWN in 5s, still serving); "
        + [l for l in g.serial().splitlines() if "ignored" in l][-1].strip())


def scenario_slow(g):
    t = g.wait_line(READY, 180)
    log(f"  ready with stackemu.delay=5 at wall {t:.2f}s, uptime "
        f"{uptime_of(g.serial(), 'http listening')}s")


def run(name, **kw):
    log(f"[{name}]")
    g = Guest(**kw)
    try:
        globals()["scenario_" + name.replace("-", "_")](g)
        log(f"  PASS")
        return True
    except Exception as e:
        log(f"  FAIL: {e!r}\n--- serial ---\n{g.serial()}")
        return False
    finally:
        g.stop()


def scenario_disk():
    log("[disk]")
    img = tempfile.mktemp(prefix="sg-disk.", suffix=".img", dir="/tmp")
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-F", img, "32M"], check=True)
    ok = True
    try:
        for boot in (1, 2):
            g = Guest(disk=img)
            try:
                g.wait_line(READY)
                assert "mounted /dev/vda (ext4) at /data" in g.serial(), g.serial()
                qga = Qga(os.path.join(g.dir, "qga.sock"))
                qga.sync()
                script = ("cat /data/boots 2>/dev/null; echo boot >> /data/boots"
                          if boot == 1 else "cat /data/boots")
                pid = qga.cmd("guest-exec", path="/bin/sh", arg=["-c", script],
                              **{"capture-output": True})["pid"]
                for _ in range(100):
                    st = qga.cmd("guest-exec-status", pid=pid)
                    if st["exited"]:
                        break
                    time.sleep(0.05)
                out = base64.b64decode(st.get("out-data", "")).decode()
                qga.close()
                if boot == 2:
                    assert out == "boot\n", out
                    log("  /data persisted across power-off and reboot")
                g.qmp.cmd("system_powerdown")
                ev = g.qmp.wait_event("SHUTDOWN", 10)
                assert ev and ev["data"]["reason"] == "guest-shutdown", ev
                g.wait_exit(10)
            finally:
                g.stop()
        log("  PASS")
    except Exception as e:
        log(f"  FAIL: {e!r}")
        ok = False
    finally:
        os.unlink(img)
    return ok


def main():
    subprocess.run([BUILD], check=True, stdout=subprocess.DEVNULL)
    names = sys.argv[1:] or ["normal", "agent", "fail", "panic", "ignore-button", "slow", "disk"]
    results = []
    for n in names:
        if n == "disk":
            results.append(scenario_disk())
        elif n == "slow":
            results.append(run(n, mode="slow", delay=5))
        elif n in ("normal", "agent"):
            results.append(run(n))
        else:
            results.append(run(n, mode=n))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
