#!/usr/bin/env python3
"""End-to-end: `stackemu exec` and `stackemu cp` on real QEMU (TCG) with the test guest.

Usage: tests/e2e/exec_e2e.py STACKEMU
Starts the test guest (512 MiB, 1 vCPU), runs commands through its agent (output, exit codes,
stdin, --stream, --timeout, a missing program), copies a 1 MiB random file into /data and back,
then stops it. Makes sure no QEMU of its own is left running. Exit status 0 when all passed.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_e2e import BUILD_GUEST, Failure, Instance, check  # noqa: E402


def log(msg):
    print(f"exec_e2e: {msg}", flush=True)


def stackemu(inst, *args, stdin=subprocess.DEVNULL, input_bytes=None, timeout=180):
    """Runs stackemu with bytes in and out; stdin is /dev/null unless input_bytes is given."""
    t0 = time.monotonic()
    p = subprocess.run([inst.stackemu, *args], env=inst.env, capture_output=True,
                       stdin=None if input_bytes is not None else stdin, input=input_bytes,
                       timeout=timeout)
    log(f"stackemu {' '.join(args)} -> {p.returncode} in {time.monotonic() - t0:.2f}s")
    return p


def scenario(inst, tmp):
    p, _ = inst.start()
    check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")

    p = stackemu(inst, "exec", "--", "uname", "-a")
    check(p.returncode == 0, f"uname -a exited {p.returncode}: {p.stderr!r}")
    check(p.stdout.startswith(b"Linux "), f"uname -a printed {p.stdout!r}")

    p = stackemu(inst, "exec", "--", "sh", "-c", "echo to-stderr >&2; exit 3")
    check(p.returncode == 3, f"sh -c 'exit 3' gave {p.returncode}: {p.stderr!r}")
    check(p.stderr == b"to-stderr\n", f"stderr was {p.stderr!r}")

    data = b"hello from the host\n\x00\xff binary too\n"
    p = stackemu(inst, "exec", "--", "cat", input_bytes=data)
    check(p.returncode == 0 and p.stdout == data, f"cat echoed {p.stdout!r} ({p.returncode})")

    p = stackemu(inst, "exec", "--", "no-such-program")
    check(p.returncode == 127, f"a missing program gave {p.returncode}")
    check(b"the guest has no program `no-such-program`" in p.stderr, f"stderr: {p.stderr!r}")

    p = stackemu(inst, "exec", "--", "sh", "-c", "kill -TERM $$")
    check(p.returncode == 128 + 15, f"a SIGTERM'd command gave {p.returncode}")

    # --timeout: killed through the guest's kill; exit 124.
    p = stackemu(inst, "exec", "--timeout", "2", "--", "sleep", "60")
    check(p.returncode == 124, f"--timeout gave {p.returncode}: {p.stderr!r}")
    check(b"it was killed" in p.stderr, f"the timeout did not say it killed: {p.stderr!r}")

    # --stream: the first line arrives while the command still runs.
    t0 = time.monotonic()
    proc = subprocess.Popen([inst.stackemu, "exec", "--stream", "--", "sh", "-c",
                             "echo first; sleep 4; echo second"], env=inst.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    t_first = time.monotonic() - t0
    rest, err = proc.communicate(timeout=120)
    t_end = time.monotonic() - t0
    log(f"--stream: first line after {t_first:.2f}s, exit after {t_end:.2f}s")
    check(proc.returncode == 0, f"--stream exited {proc.returncode}: {err!r}")
    check(first == b"first\n" and rest == b"second\n", f"--stream printed {first!r} {rest!r}")
    check(t_end - t_first > 2.5, "--stream printed the first line only at the end")
    p = stackemu(inst, "exec", "--", "sh", "-c", "ls -a /tmp | grep -c stackemu-exec || true")
    check(p.stdout.strip() == b"0", f"--stream left files in /tmp: {p.stdout!r}")

    # cp: 1 MiB of random bytes into /data and back, byte-identical.
    blob = os.urandom(1 << 20)
    src = os.path.join(tmp, "blob")
    with open(src, "wb") as f:
        f.write(blob)
    p = stackemu(inst, "cp", src, "guest:/data/")
    check(p.returncode == 0, f"cp into the guest failed: {p.stderr!r}")
    log(p.stdout.decode().strip())
    check(b"checked by sha256sum in the guest" in p.stdout, f"cp said {p.stdout!r}")
    p = stackemu(inst, "exec", "--", "sha256sum", "/data/blob")
    check(p.stdout.split()[0].decode() == hashlib.sha256(blob).hexdigest(),
          f"the guest's sha256sum: {p.stdout!r}")
    back = os.path.join(tmp, "back")
    p = stackemu(inst, "cp", "--json", "guest:/data/blob", back)
    check(p.returncode == 0, f"cp out of the guest failed: {p.stderr!r}")
    log(p.stdout.decode().replace("\n", " "))
    with open(back, "rb") as f:
        check(f.read() == blob, "the file copied back differs")

    # A missing guest file: a clear error, the host file untouched.
    keep = os.path.join(tmp, "keep")
    with open(keep, "wb") as f:
        f.write(b"mine")
    p = stackemu(inst, "cp", "guest:/data/no-such-file", keep)
    check(p.returncode == 1, f"cp of a missing file gave {p.returncode}")
    check(b"guest:/data/no-such-file does not exist" in p.stderr, f"stderr: {p.stderr!r}")
    with open(keep, "rb") as f:
        check(f.read() == b"mine", "the host file was changed")
    check(sorted(os.listdir(tmp)) == ["back", "blob", "keep", "run"],
          f"temporary files were left: {os.listdir(tmp)}")

    p, _ = inst.run("stop")
    check(p.returncode == 0, f"stop was not clean: {p.stdout} {p.stderr}")
    p = stackemu(inst, "exec", "--", "true")
    check(p.returncode == 125 and b"not running" in p.stderr,
          f"exec on a stopped VM gave {p.returncode}: {p.stderr!r}")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    stackemu_exe = os.path.abspath(sys.argv[1])
    guest = subprocess.run([BUILD_GUEST], capture_output=True, text=True, check=True)
    image = os.path.join(guest.stdout.strip().splitlines()[-1], "test-guest.qcow2")
    with tempfile.TemporaryDirectory(prefix="stackemu-e2e-exec-") as tmp:
        inst = Instance(stackemu_exe, image, tmp)
        try:
            scenario(inst, tmp)
            log("all passed")
            return 0
        except (Failure, subprocess.TimeoutExpired, OSError, IndexError) as e:
            log(f"FAILED: {e}")
            return 1
        finally:
            inst.cleanup()


if __name__ == "__main__":
    sys.exit(main())
