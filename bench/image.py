#!/usr/bin/env python3
"""Image benchmarks on real QEMU (TCG): build-image of the demo profile, its cold and warm
starts, and how fast build-image acts on a failure marker. Prints JSON.

Usage: bench/image.py STACKEMU [--runs N] [--rebuild-base] [--skip-build] [--image QCOW2]

  build     one `stackemu build-image --profile demo` into a scratch directory, split into its
            phases (base, provisioning, power-off, compression); the base comes from the cache
            unless --rebuild-base (then the base phase is a whole debootstrap)
  starts    `stackemu bench --runs N` on the demo image: N cold starts and N warm ones (from the
            ready state, saved once before), side by side; p50 of each
  failure   N builds of tests/e2e/profiles/fail: from the moment stackemu sees the guest's
            STACK_CLOUD_INIT_FAILED line to build-image's exit (its failure_to_exit_ms, plus
            the process exit measured here)
Targets (issues 4 and 5): failure marker to exit p50 <= 100 ms; warm start p50 <= 3 s.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FAIL_PROFILE = os.path.join(REPO, "tests", "e2e", "profiles", "fail")


def p50(values):
    v = sorted(values)
    return v[len(v) // 2] if v else None


def stats(values):
    v = sorted(values)
    if not v:
        return {}
    return {"n": len(v), "min": round(v[0], 1), "p50": round(p50(v), 1), "max": round(v[-1], 1)}


def note(msg):
    print(f"bench/image: {msg}", file=sys.stderr, flush=True)


def env_for(tmp):
    env = dict(os.environ)
    env["EMULATOR_RUN_DIR"] = os.path.join(tmp, "run")
    env["EMULATOR_IMAGE_DIR"] = os.path.join(tmp, "images")
    env.pop("EMULATOR_NAME", None)
    return env


def run_json(argv, env, timeout):
    t0 = time.monotonic()
    p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    wall = (time.monotonic() - t0) * 1000
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        out = None
    return p, out, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stackemu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebuild-base", action="store_true")
    ap.add_argument("--skip-build", action="store_true", help="use --image instead of building")
    ap.add_argument("--image", help="the demo image to start (default: the one built here)")
    args = ap.parse_args()
    stackemu = os.path.abspath(args.stackemu)
    tmp = tempfile.mkdtemp(prefix="stackemu-bench-image-")
    env = env_for(tmp)
    result = {"runs": args.runs}
    try:
        image = args.image
        if not args.skip_build:
            image = os.path.join(tmp, "out", "demo.qcow2")
            argv = [stackemu, "build-image", "--profile", "demo", "--output", image, "--json"]
            if args.rebuild_base:
                argv.append("--rebuild-base")
            note("building the demo image")
            p, out, wall = run_json(argv, env, 7200)
            if p.returncode != 0 or not out:
                sys.exit(f"build-image failed ({p.returncode}): {p.stderr[-3000:]}")
            result["build"] = {"phases_ms": {k: round(v, 1) for k, v in out["phases_ms"].items()},
                               "total_ms": round(out["total_ms"], 1),
                               "wall_ms": round(wall, 1),
                               "base_cached": out["base_cached"],
                               "image_mib": round(out["bytes"] / 2**20, 1)}
        if not image:
            sys.exit("--skip-build needs --image")

        # Cold and warm starts: the ready state is saved once, then `stackemu bench`.
        start = [stackemu, "start", "--image", image, "--ram", "1024", "--cpus", "2", "--json"]
        p, out, _ = run_json(start, env, 900)
        if p.returncode != 0:
            sys.exit(f"start failed: {p.stderr[-3000:]}")
        subprocess.run([stackemu, "snapshot", "save", "stackemu-ready", "--replace"], env=env,
                       capture_output=True, check=True, timeout=600)
        subprocess.run([stackemu, "stop"], env=env, capture_output=True, timeout=600)
        note(f"stackemu bench --runs {args.runs}")
        bench_env = dict(env, EMULATOR_RAM="1024", EMULATOR_CPUS="2")
        p, out, _ = run_json([stackemu, "bench", "--image", image, "--runs", str(args.runs),
                              "--json"], bench_env, 3600)
        if p.returncode != 0 or not out:
            sys.exit(f"stackemu bench failed ({p.returncode}): {p.stderr[-3000:]}")
        result["starts"] = {k: out.get(k) for k in ("start_to_ready", "warm_start_to_ready",
                                                     "stop", "accelerator") if k in out}

        # The failure marker: N failing builds.
        marker_ms, exit_ms = [], []
        for i in range(args.runs):
            out_image = os.path.join(tmp, "fail", "fail.qcow2")
            p, out, wall = run_json([stackemu, "build-image", "--profile", FAIL_PROFILE, "--output",
                                     out_image, "--json"], env, 1800)
            if p.returncode != 6 or not out:
                sys.exit(f"the failing build did not fail as expected ({p.returncode}): "
                         f"{p.stderr[-3000:]}")
            marker_ms.append(out["failure_to_exit_ms"])
            note(f"failure run {i + 1}: marker to result {out['failure_to_exit_ms']:.1f} ms")
        result["failure_marker_to_exit"] = stats(marker_ms)
    finally:
        subprocess.run([stackemu, "stop"], env=env, capture_output=True, timeout=600)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
