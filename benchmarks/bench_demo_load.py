"""The demo on a busy machine: ``polyact demo`` with N busy loops beside it.

Usage: python benchmarks/bench_demo_load.py [--busy 4] [--out DIR] [--threads N] [-- demo options]

Starts ``--busy`` processes that spin (``while True: pass``, each wants a whole core), then runs
``python -m polyact demo --out DIR`` and waits for it; stops the loops. Prints the demo's summary,
then its wall time, its own CPU seconds (user + system of the demo process, from ``wait4``) and the
1-minute load average at the start and at the end, and ends with one JSON line. ``--threads``
sets ``POLYACT_THREADS`` for the demo (default: the demo's own choice). The issue's target: at
``--busy 4`` the demo finishes in 3 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from machine import Meter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=4, help="busy loops beside the demo (default: 4)")
    parser.add_argument("--out", help="the demo's report folder (default: a temporary folder)")
    parser.add_argument("--threads", type=int, help="POLYACT_THREADS for the demo (default: its own choice)")
    args, demo_args = parser.parse_known_args()
    demo_args = [a for a in demo_args if a != "--"]
    out = args.out or tempfile.mkdtemp(prefix="polyact-demo-load-")
    env = dict(os.environ)
    if args.threads is not None:
        env["POLYACT_THREADS"] = str(args.threads)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(2 if loops else 0)  # let the loops take their cores
        meter = Meter()
        demo = subprocess.Popen([sys.executable, "-m", "polyact", "demo", "--out", out, *demo_args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        summary = demo.stdout.read()
        _, status, usage = os.wait4(demo.pid, 0)
        demo.returncode = os.waitstatus_to_exitcode(status)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    figures = meter.figures()
    demo_cpu = usage.ru_utime + usage.ru_stime
    print(summary.strip())
    print(f"demo with {args.busy} busy loops: exit {demo.returncode}, wall {figures['wall_s']:.1f} s, demo CPU "
          f"{demo_cpu:.1f} s, 1-min load {figures['load_1min_start']:.2f} at start, {figures['load_1min_end']:.2f} at "
          f"end, {figures['cores']} cores; report in {out}")
    print(json.dumps({"busy": args.busy, "threads": args.threads, "exit": demo.returncode, "wall_s": figures["wall_s"],
                      "demo_cpu_s": round(demo_cpu, 2), "load_1min_start": figures["load_1min_start"],
                      "load_1min_end": figures["load_1min_end"], "cores": figures["cores"], "out": out}))
    sys.exit(demo.returncode)


if __name__ == "__main__":
    main()
