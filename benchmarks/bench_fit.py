"""Minimax (Remez) vs Chebyshev interpolation: max error, their ratio, and fit time.

Usage: python benchmarks/bench_fit.py [--degrees 3 7 15 31 63] [--repeat 3]
Prints a table, then one JSON line (a list of dicts) with every figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import polyact

INTERVALS = {
    "relu": (-5, 5), "leaky_relu": (-5, 5), "gelu": (-8, 8), "silu": (-8, 8),
    "sigmoid": (-8, 8), "tanh": (-4, 4), "elu": (-5, 5), "softplus": (-8, 8),
    "mish": (-8, 8), "hardswish": (-6, 6), "aglu": (-8, 8), "xielu": (-4, 4),
    "pau": (-3, 3), "ditac": (-4, 4),
}


def timed(fn, repeat: int) -> tuple[object, float]:
    """Result of ``fn()`` and its median wall time in seconds over ``repeat`` runs."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degrees", type=int, nargs="+", default=[3, 7, 15, 31, 63])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    rows = []
    print(f"{'activation':<11} {'deg':>4} {'minimax err':>12} {'cheb err':>12} {'cheb/minimax':>12} "
          f"{'minimax ms':>10} {'cheb ms':>8}")
    for name, interval in INTERVALS.items():
        for degree in args.degrees:
            minimax, t_minimax = timed(lambda: polyact.fit(name, interval, degree, "minimax"), args.repeat)
            cheb, t_cheb = timed(lambda: polyact.fit(name, interval, degree, "chebyshev"), args.repeat)
            ratio = cheb.max_error / minimax.max_error if minimax.max_error > 0 else float("nan")
            rows.append({
                "activation": name, "interval": list(interval), "degree": degree,
                "minimax_error": minimax.max_error, "chebyshev_error": cheb.max_error,
                "ratio": ratio, "minimax_seconds": t_minimax, "chebyshev_seconds": t_cheb,
            })
            print(f"{name:<11} {degree:>4} {minimax.max_error:>12.3e} {cheb.max_error:>12.3e} {ratio:>12.2f} "
                  f"{1e3 * t_minimax:>10.1f} {1e3 * t_cheb:>8.1f}")
    print(finish(meter, rows))


if __name__ == "__main__":
    main()
