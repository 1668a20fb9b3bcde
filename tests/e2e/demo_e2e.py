#!/usr/bin/env python3
"""End-to-end: `stackemu build-image` and the `demo` profile on real QEMU (TCG).

Usage: tests/e2e/demo_e2e.py STACKEMU [SCENARIO...]   (default: all)
Scenarios:
  build      build the demo image from `--base debian` (Debian packages, cached) into the e2e
             cache, unless an image built from the same recipe files is there already
  fail       a profile whose provisioning fails on purpose: exit 6 within seconds of the
             marker, the guest's lines shown, logs kept, no image or partial file left
  lifecycle  start the demo image: /health?db=1 through the backend port reports the database
             reachable, rows written, clean stop, start again: the rows are still there
  restore    docs/examples/restore-loop.sh: 20 cycles of rows written -> `snapshot load clean`
             -> rows gone, with the time per cycle
  share      `start --share DIR`: the guest mounts the 9p tag hostshare and reads a host file;
             writing fails (read-only on both sides); a snapshot while it is mounted is refused
             with QEMU's reason; the stop is still clean
  durability 20 cycles (STACKEMU_DURABILITY_CYCLES) of rows inserted -> `stop` -> `start --cold`
             -> every row there; each stop ends on its first rung (the guest shut itself down)
             and PostgreSQL's log at the next start reports that cycle's clean shutdown and no
             crash recovery
  warm       start the way scripts/run does (no --ram/--cpus: the profile's recommended size,
             recorded by the instance), `snapshot save stackemu-ready`, `stop`, a plain
             `start --json`: it says "warm": true (from the JSON, never from a timing)
The demo image is cached in ${XDG_CACHE_HOME:-~/.cache}/stackemu/e2e-demo/<key>/ where the key
hashes the profile, the base recipe code and build-image's code.
"""
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_e2e  # noqa: E402
from cli_e2e import Failure, check  # noqa: E402

REPO = cli_e2e.REPO
FAIL_PROFILE = os.path.join(REPO, "tests", "e2e", "profiles", "fail")
RESTORE_LOOP = os.path.join(REPO, "docs", "examples", "restore-loop.sh")


def log(msg):
    print(f"demo_e2e: {msg}", flush=True)


def recipe_key():
    h = hashlib.sha256()
    files = sorted(glob.glob(os.path.join(REPO, "cloud-init", "demo", "*")))
    files += sorted(glob.glob(os.path.join(REPO, "src", "provision", "debian_base*")))
    files += [os.path.join(REPO, "src", "lifecycle", "build_image.cpp")]
    for f in files:
        h.update(os.path.relpath(f, REPO).encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stackemu", "e2e-demo", recipe_key())


def demo_image():
    return os.path.join(cache_dir(), "demo.qcow2")


def build_env(tmp):
    env = dict(os.environ)
    env["EMULATOR_RUN_DIR"] = os.path.join(tmp, "run")
    env["EMULATOR_IMAGE_DIR"] = os.path.join(tmp, "images")
    env.pop("EMULATOR_NAME", None)
    env.pop("EMULATOR_QEMU", None)
    return env


class DemoInstance(cli_e2e.Instance):
    def start(self, *extra):
        return self.run("start", "--image", self.image, "--ram", "1024", "--cpus", "2", *extra,
                        timeout=400)

    def sql(self, statement):
        p, _ = self.run("exec", "--", "runuser", "-u", "stackapp", "--", "psql", "-d",
                        "stackapp", "-v", "ON_ERROR_STOP=1", "-qtAc", statement)
        check(p.returncode == 0, f"psql failed: {p.stdout} {p.stderr}")
        return p.stdout.strip()


def scenario_build(stackemu, tmp):
    image = demo_image()
    if os.path.exists(image) and os.path.exists(image[:-len(".qcow2")] + ".json"):
        log(f"demo image for this recipe already built: {image}")
        return
    os.makedirs(os.path.dirname(image), exist_ok=True)
    env = build_env(tmp)
    t0 = time.monotonic()
    p = subprocess.run([stackemu, "build-image", "--profile", "demo", "--output", image, "--json"],
                       env=env, stdout=subprocess.PIPE, stderr=None, text=True, timeout=3600)
    log(f"build-image --profile demo -> {p.returncode} in {time.monotonic() - t0:.1f}s")
    check(p.returncode == 0, f"building the demo image failed: {p.stdout}")
    out = json.loads(p.stdout)
    check(out["ok"] and os.path.exists(out["image"]) and os.path.exists(out["manifest"]),
          f"build-image reported {out}")
    log(f"phases (ms): {out['phases_ms']}; image {out['bytes'] / 2**20:.1f} MiB")
    manifest = json.load(open(out["manifest"]))
    check(manifest["profile"]["name"] == "demo", f"manifest profile: {manifest['profile']}")
    check(manifest["boot"]["mode"] == "kernel", "the debian base boots its kernel directly")
    check(not glob.glob(image + ".partial*"), "a partial file was left beside the image")
    check(os.path.isdir(out["logs"]) and os.path.exists(os.path.join(out["logs"], "serial.log")),
          "the provisioning logs were not kept")


def scenario_fail(stackemu, tmp):
    env = build_env(tmp)
    out_image = os.path.join(tmp, "out", "fail.qcow2")
    t0 = time.monotonic()
    p = subprocess.run([stackemu, "build-image", "--profile", FAIL_PROFILE, "--output", out_image,
                        "--json"], env=env, capture_output=True, text=True, timeout=1800)
    log(f"build-image --profile fail -> {p.returncode} in {time.monotonic() - t0:.1f}s")
    check(p.returncode == 6, f"expected exit 6 (provisioning failed): {p.returncode} {p.stderr}")
    out = json.loads(p.stdout)
    check(not out["ok"] and "STACK_CLOUD_INIT_FAILED" in out["failure"],
          f"the cause does not name the marker: {out.get('failure')}")
    log(f"failure marker to exit: {out['failure_to_exit_ms']:.1f} ms")
    check(out["failure_to_exit_ms"] < 10000, "build-image took too long to act on the marker")
    check(any("fail profile" in line for line in out["last_lines"]),
          f"the guest's lines are not shown: {out['last_lines'][-5:]}")
    check(os.path.exists(os.path.join(out["logs"], "serial.log")), "logs not kept")
    leftovers = [f for f in os.listdir(os.path.dirname(out_image))
                 if not f.startswith("build-logs")] if os.path.isdir(os.path.dirname(out_image)) else []
    check(not leftovers, f"files left where the image would go: {leftovers}")
    check(not cli_e2e.Instance(stackemu, out_image, tmp).qemu_pids(), "a QEMU was left running")
    # The human form of this report is checked against the fake QEMU (integration tier,
    # "build-image: a failure marker is reported ..."): a second build here took 2-3 min of CI.


def health(inst):
    with urllib.request.urlopen(f"http://127.0.0.1:{inst.backend_port}/health?db=1",
                                timeout=20) as r:
        return r.status, r.read().decode(errors="replace")


def scenario_lifecycle(stackemu, tmp):
    inst = DemoInstance(stackemu, demo_image(), tmp)
    try:
        p, elapsed = inst.start("--json")
        check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")
        log(f"cold start to ready: {json.loads(p.stdout)['total_ms']:.0f} ms")
        status, body = health(inst)
        check(status == 200 and "ok" in body.lower(), f"/health?db=1: {status} {body}")
        log(f"/health?db=1 -> {status} {body.strip()[:200]}")
        inst.sql("CREATE TABLE IF NOT EXISTS e2e_rows (n int)")
        inst.sql("INSERT INTO e2e_rows SELECT generate_series(1, 500)")
        p, _ = inst.run("stop", "--json")
        check(p.returncode == 0, f"stop was not clean: {p.stdout} {p.stderr}")
        check(json.loads(p.stdout)["clean"], f"stop: {p.stdout}")
        p, _ = inst.start("--json")
        check(p.returncode == 0, f"second start failed: {p.stdout} {p.stderr}")
        check(inst.sql("SELECT count(*) FROM e2e_rows") == "500", "rows lost across stop/start")
        status, body = health(inst)
        check(status == 200, f"/health?db=1 after the second start: {status} {body}")
        p, _ = inst.run("stop")
        check(p.returncode == 0, f"second stop was not clean: {p.stdout}")
    finally:
        inst.cleanup()


def scenario_restore(stackemu, tmp):
    inst = DemoInstance(stackemu, demo_image(), tmp)
    try:
        p, _ = inst.start("--json")
        check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")
        env = dict(inst.env, STACKEMU=stackemu)
        t0 = time.monotonic()
        p = subprocess.run([RESTORE_LOOP, "20"], env=env, capture_output=True, text=True,
                           timeout=1800)
        sys.stdout.write(p.stdout)
        check(p.returncode == 0, f"restore-loop.sh failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        cycles = [line for line in p.stdout.splitlines() if line.startswith("cycle ")]
        check(len(cycles) == 20, f"expected 20 cycles, got {len(cycles)}")
        log(f"20 cycles in {time.monotonic() - t0:.1f}s")
        p, _ = inst.run("stop")
        check(p.returncode == 0, f"stop was not clean: {p.stdout}")
    finally:
        inst.cleanup()


PG_UNIT = "postgresql@15-main.service"
FIRST_RUNGS = ("agent-shutdown", "powerdown")


def check_pg_clean_start(inst, cycle, stop_began):
    """This boot's server started from a cluster that was shut down cleanly by the last stop.
    PostgreSQL records a completed shutdown in pg_control and says so at the next start ("was
    shut down at T"); after a crash it says "was interrupted" or "not properly shut down" and
    replays WAL. T after the stop began shows it was this cycle's shutdown. (The demo's journal
    is in RAM, so the previous boot's own lines are gone; the start's account is PostgreSQL's.)"""
    p, _ = inst.run("exec", "--", "journalctl", "-q", "-o", "cat", "-b", "0", "-u", PG_UNIT)
    check(p.returncode == 0, f"journalctl failed: {p.stdout} {p.stderr}")
    text = p.stdout
    for bad in ("not properly shut down", "was interrupted", "automatic recovery in progress",
                "redo starts at"):
        check(bad not in text, f"cycle {cycle}: crash recovery in PostgreSQL's log: {text[-3000:]}")
    m = re.search(r"database system was shut down at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC",
                  text)
    check(m is not None, f"cycle {cycle}: PostgreSQL's start does not report a clean shutdown: "
                         f"{text[-3000:]}")
    shut = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=datetime.timezone.utc)
    # A few seconds of slack for the guest clock against the host's.
    check(shut.timestamp() >= stop_began - 5,
          f"cycle {cycle}: the clean shutdown PostgreSQL reports ({m.group(1)}) is older than "
          f"this cycle's stop")
    return m.group(1)


def scenario_durability(stackemu, tmp):
    cycles = int(os.environ.get("STACKEMU_DURABILITY_CYCLES", "20"))
    rows_per_cycle = 1000
    inst = DemoInstance(stackemu, demo_image(), tmp)
    try:
        p, _ = inst.start("--cold", "--json")
        check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")
        inst.sql("CREATE TABLE IF NOT EXISTS durability (cycle int, n int)")
        stops, starts = [], []
        for cycle in range(1, cycles + 1):
            # Committed rows, acknowledged to the client: exactly what a user expects to keep.
            inst.sql(f"INSERT INTO durability SELECT {cycle}, generate_series(1, {rows_per_cycle})")
            stop_began = time.time()
            p, _ = inst.run("stop", "--json")
            check(p.returncode == 0, f"cycle {cycle}: stop was not clean: {p.stdout} {p.stderr}")
            stop = json.loads(p.stdout)
            check(stop["clean"] and stop["rung"] in FIRST_RUNGS and len(stop["rungs"]) == 1,
                  f"cycle {cycle}: stop did not end on its first rung: {stop}")
            check(not inst.qemu_pids(), f"cycle {cycle}: QEMU still runs after stop")
            p, _ = inst.start("--cold", "--json")
            check(p.returncode == 0, f"cycle {cycle}: start failed: {p.stdout} {p.stderr}")
            started = json.loads(p.stdout)
            count = inst.sql("SELECT count(*) FROM durability")
            check(count == str(cycle * rows_per_cycle),
                  f"cycle {cycle}: {count} rows, expected {cycle * rows_per_cycle}")
            shut_down_at = check_pg_clean_start(inst, cycle, stop_began)
            stops.append(stop["total_ms"])
            starts.append(started["total_ms"])
            log(f"cycle {cycle}: {count} rows; stop {stop['total_ms']:.0f} ms by {stop['rung']}, "
                f"PostgreSQL shut down cleanly at {shut_down_at}; "
                f"cold start {started['total_ms']:.0f} ms")
        stops.sort()
        starts.sort()
        log(f"{cycles} cycles: every stop clean on its first rung, no row lost, no crash "
            f"recovery; stop p50 {stops[len(stops) // 2]:.0f} ms, "
            f"cold start p50 {starts[len(starts) // 2]:.0f} ms")
        p, _ = inst.run("stop")
        check(p.returncode == 0, f"final stop was not clean: {p.stdout}")
    finally:
        inst.cleanup()


def scenario_share(stackemu, tmp):
    shared = os.path.join(tmp, "project")
    os.makedirs(shared)
    with open(os.path.join(shared, "hello.txt"), "w") as f:
        f.write("from the host\n")
    inst = DemoInstance(stackemu, demo_image(), tmp)
    try:
        p, _ = inst.start("--cold", "--share", shared, "--json")
        check(p.returncode == 0, f"start --share failed: {p.stdout} {p.stderr}")
        p, _ = inst.run("exec", "--", "sh", "-c",
                        "modprobe 9pnet_virtio && mkdir -p /mnt/hostshare && "
                        "mount -t 9p -o trans=virtio,version=9p2000.L,ro hostshare /mnt/hostshare "
                        "&& cat /mnt/hostshare/hello.txt")
        check(p.returncode == 0 and p.stdout.strip() == "from the host",
              f"the guest could not read the share: {p.returncode} {p.stdout} {p.stderr}")
        # Even remounted writable by guest root, the host side stays read-only.
        p, _ = inst.run("exec", "--", "sh", "-c",
                        "mount -o remount,rw /mnt/hostshare; echo x > /mnt/hostshare/new.txt")
        check(p.returncode != 0, f"the guest wrote into a read-only share: {p.stdout}")
        check(not os.path.exists(os.path.join(shared, "new.txt")), "a file appeared on the host")
        p, _ = inst.run("snapshot", "save", "with-share", "--json")
        check(p.returncode != 0 and "VirtFS" in (p.stdout + p.stderr),
              f"a snapshot with the share mounted was not refused clearly: {p.stdout} {p.stderr}")
        log(f"snapshot with the share mounted: {(p.stderr or p.stdout).strip()[:300]}")
        p, _ = inst.run("stop", "--json")
        check(p.returncode == 0 and json.loads(p.stdout)["clean"], f"stop: {p.stdout} {p.stderr}")
    finally:
        inst.cleanup()


def default_image_dir(tmp):
    """An EMULATOR_IMAGE_DIR whose built image (stack-emulator-<arch>) is the cached demo image,
    so that a start without --image takes it, as after `scripts/run`'s build-image. The
    manifest is a copy with absolute paths; the disk is the cached one (linked, not copied)."""
    image = demo_image()
    manifest_path = image[:-len(".qcow2")] + ".json"
    with open(manifest_path) as f:
        manifest = json.load(f)
    base = os.path.dirname(manifest_path)
    manifest["disk"] = os.path.join(base, manifest["disk"])
    if manifest["boot"]["mode"] == "kernel":
        for key in ("kernel", "initrd"):
            manifest["boot"][key] = os.path.join(base, manifest["boot"][key])
    images = os.path.join(tmp, "images")
    os.makedirs(images, exist_ok=True)
    name = f"stack-emulator-{manifest['arch']}"
    os.symlink(manifest["disk"], os.path.join(images, name + ".qcow2"))
    with open(os.path.join(images, name + ".json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return images, manifest


def scenario_warm(stackemu, tmp):
    images, manifest = default_image_dir(tmp)
    recommended = manifest["profile"].get("resources")
    check(recommended == {"ram_mib": 1024, "cpus": 2},
          f"the demo image's manifest does not carry the profile's size: {recommended}")
    inst = DemoInstance(stackemu, demo_image(), tmp)
    inst.env["EMULATOR_IMAGE_DIR"] = images
    for var in ("EMULATOR_RAM", "EMULATOR_RAM_MB", "EMULATOR_CPUS", "EMULATOR_ARCH"):
        inst.env.pop(var, None)
    try:
        # What scripts/run runs after its build-image: a plain start.
        p, _ = inst.run("start", "--json", timeout=400)
        check(p.returncode == 0, f"start failed: {p.stdout} {p.stderr}")
        out = json.loads(p.stdout)
        check(out["ram_mib"] == 1024 and out["cpus"] == 2,
              f"a start without size flags did not take the profile's size: {out}")
        log(f"cold start to ready: {out['total_ms']:.0f} ms")
        p, _ = inst.run("snapshot", "save", "stackemu-ready", "--json", timeout=600)
        check(p.returncode == 0, f"snapshot save stackemu-ready failed: {p.stdout} {p.stderr}")
        p, _ = inst.run("stop", "--json")
        check(p.returncode == 0 and json.loads(p.stdout)["clean"], f"stop: {p.stdout} {p.stderr}")
        # No flag at all: the instance's record gives the same size, so the state fits.
        p, _ = inst.run("start", "--json", timeout=400)
        check(p.returncode == 0, f"the plain start failed: {p.stdout} {p.stderr}")
        out = json.loads(p.stdout)
        check(out["warm"] is True,
              f"the plain start did not resume the ready state: {out['warm_note']} {p.stderr}")
        check(out["ram_mib"] == 1024 and out["cpus"] == 2 and not out["config_changes"],
              f"the plain start changed the instance: {out}")
        log(f"warm start to ready: {out['total_ms']:.0f} ms")
        p, _ = inst.run("config", "show", "--json")
        check(p.returncode == 0, f"config show failed: {p.stderr}")
        shown = json.loads(p.stdout)["settings"]
        check(shown["ram"]["source"] == "record" and shown["cpus"]["source"] == "record",
              f"config show: {shown['ram']} {shown['cpus']}")
        p, _ = inst.run("stop")
        check(p.returncode == 0, f"final stop was not clean: {p.stdout}")
    finally:
        inst.cleanup()


SCENARIOS = {
    "build": scenario_build,
    "fail": scenario_fail,
    "lifecycle": scenario_lifecycle,
    "restore": scenario_restore,
    "share": scenario_share,
    "durability": scenario_durability,
    "warm": scenario_warm,
}


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    stackemu = os.path.abspath(sys.argv[1])
    names = sys.argv[2:] or list(SCENARIOS)
    for name in names:
        if name not in SCENARIOS:
            print(f"unknown scenario {name}; known: {' '.join(SCENARIOS)}")
            return 2
    failed = []
    for name in names:
        log(f"--- {name}")
        tmp = tempfile.mkdtemp(prefix=f"stackemu-demo-{name}-")
        try:
            if name != "build" and not os.path.exists(demo_image()):
                raise Failure(f"no demo image at {demo_image()}: run the build scenario first")
            SCENARIOS[name](stackemu, tmp)
            log(f"--- {name}: passed")
        except (Failure, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            log(f"--- {name}: FAILED: {e}")
            failed.append(name)
            # The guest's side of the failure, before the scratch directory goes.
            for serial in glob.glob(os.path.join(tmp, "**", "serial.log"), recursive=True):
                with open(serial, errors="replace") as f:
                    tail = f.read().replace("\r", "").splitlines()[-60:]
                log(f"last lines of {serial}:\n" + "\n".join(tail))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        log(f"failed: {' '.join(failed)}")
        return 1
    log("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
