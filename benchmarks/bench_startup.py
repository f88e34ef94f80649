"""Start time of the ``polyact`` command: wall time of fresh interpreter processes.

Usage: python benchmarks/bench_startup.py [--repeat 7] [--tree NAME=DIR ...]

Each command runs as a new process exactly as the ``polyact`` console script does
(``from polyact.cli import main``), with ``PYTHONPATH`` set to a source tree. Several trees
(e.g. ``before=/tmp/old-checkout after=.``) are measured in the same run, interleaved round by
round (every tree x command once per round), so load on the machine hits all arms alike.
Prints medians per tree and command, ratios against the first tree, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONSOLE_SCRIPT = "import sys; from polyact.cli import main; sys.exit(main())"
COMMANDS: dict[str, list[str]] = {
    "polyact --help": ["-c", CONSOLE_SCRIPT, "--help"],
    "polyact fit --help": ["-c", CONSOLE_SCRIPT, "fit", "--help"],
    "polyact fit relu --interval -5 5 --degree 15": ["-c", CONSOLE_SCRIPT, "fit", "relu", "--interval", "-5", "5",
                                                     "--degree", "15"],
    "import polyact": ["-c", "import polyact"],
    "python -c pass (interpreter floor)": ["-c", "pass"],
}


def run_once(args: list[str], tree: Path, cwd: str) -> float:
    """Wall seconds of one ``python ARGS`` process with ``tree`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed in {tree}:\n{done.stderr[-2000:]}")
    return elapsed


def parse_tree(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not (Path(path) / "polyact" / "__init__.py").is_file():
        raise SystemExit(f"--tree takes NAME=DIR where DIR/polyact/__init__.py exists; got {spec!r}")
    return name, Path(path).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds; each runs every tree x command once")
    parser.add_argument("--tree", action="append", default=None, metavar="NAME=DIR",
                        help="a source tree to measure (repeatable; default: this checkout)")
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    trees = [parse_tree(s) for s in args.tree] if args.tree else [("this", Path(__file__).resolve().parent.parent)]
    times: dict[tuple[str, str], list[float]] = {(t, c): [] for t, _ in trees for c in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:  # outside any tree, so only PYTHONPATH decides
        for _ in range(args.repeat):
            for command, argv in COMMANDS.items():
                for name, path in trees:
                    times[name, command].append(run_once(argv, path, cwd))
    rows = []
    first = trees[0][0]
    print(f"{'command':<46} {'tree':<8} {'median s':>9} {'min s':>7} {'max s':>7} {'vs ' + first:>9}")
    for command in COMMANDS:
        for name, _ in trees:
            runs = times[name, command]
            median = statistics.median(runs)
            ratio = statistics.median(times[first, command]) / median
            rows.append({"command": command, "tree": name, "median_seconds": round(median, 4),
                         "min_seconds": round(min(runs), 4), "max_seconds": round(max(runs), 4),
                         "runs": len(runs), f"speedup_vs_{first}": round(ratio, 2)})
            print(f"{command:<46} {name:<8} {median:>9.3f} {min(runs):>7.3f} {max(runs):>7.3f} {ratio:>8.2f}x")
    print(finish(meter, rows))


if __name__ == "__main__":
    main()
