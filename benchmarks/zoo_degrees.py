"""Minimax degree each literature activation needs for a max error of 2^-8 and 2^-12 on [-8, 8].

Usage: python benchmarks/zoo_degrees.py [--bits 8 12] [--interval -8 8] [--max-degree 1023] [--jobs 1]
Each activation at its default parameters; the degree is the smallest whose certified Remez
error is at most ``2^-bits`` (absolute). Prints a markdown table (the README's), then one JSON
line (a list of dicts) with the degrees, the errors reached and the search time.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import time
import warnings
from typing import Callable

import polyact
from polyact.activations.literature import LITERATURE

FORMULAS = {
    "ulu": "0.5x(tanh(α₁x)+1) for x<0, 0.5x(tanh(α₂x)+1) for x≥0",
    "relu2": "max(0, x)²",
    "eelu": "−x·erf(e^(−x))",
    "sqish": "αx + (1−α)x / √(1 + β e^(−2γ(1−α)x))",
    "swim": "x/2 · (1 + kx/√(1 + k²x²)), k = 0.5",
    "lslu": "g₀ = relu(x), gᵢ = relu(θᵢ gᵢ₋₁ + ωᵢ), i = 1..3",
    "taaf": "α f(βx + γ) + δ, f = tanh",
    "apalu": "a(x + x·σ(1.702x)) for x≥0, b(eˣ − 1) for x<0",
    "neaf": "α relu(x) + c β |x|³",
    "raf": "P₅(x) / (1 + Σₖ₌₁⁴ |bₖ xᵏ|), GELU start",
}


def minimax_errors(name: str, interval: tuple[float, float]) -> Callable[[int], float]:
    """``degree -> certified minimax error`` of ``name`` on ``interval``, cached."""
    errors: dict[int, float] = {}

    def error(degree: int) -> float:
        if degree not in errors:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # max_error is certified anyway
                errors[degree] = polyact.fit(name, interval, degree).max_error
        return errors[degree]

    return error


def minimal_degree(error: Callable[[int], float], tol: float, max_degree: int) -> tuple[int | None, float]:
    """Smallest degree with ``error(degree) <= tol`` (None above ``max_degree``) and its error.

    The minimax error decreases with the degree: bracket by doubling, then narrow the bracket
    with probes where the line through the bracket ends in (log degree, log error) meets
    ``log tol`` (power-law errors, so few probes), falling back to the midpoint."""
    low, high = 1, 2
    while error(high) > tol:
        if high == max_degree:
            return None, error(high)
        low, high = high, min(2 * high, max_degree)
    if error(low) <= tol:
        return low, error(low)
    while high - low > 1:  # error(low) > tol >= error(high)
        e_low, e_high = error(low), max(error(high), 1e-300)
        slope = math.log(e_high / e_low) / math.log(high / low)
        guess = round(low * (tol / e_low) ** (1.0 / slope)) if slope < 0 else (low + high) // 2
        probe = min(max(guess, low + 1), high - 1)
        if error(probe) <= tol:
            high = probe
        else:
            low = probe
    return high, error(high)


def degrees_row(name: str, interval: tuple[float, float], bits: list[int], max_degree: int) -> dict:
    """The table row of one activation: its degrees, errors reached and search seconds."""
    learnable = [n for n, _ in polyact.get_activation(name).named_parameters() if "." not in n]
    row = {"activation": name, "class": LITERATURE[name].__name__, "formula": FORMULAS[name],
           "learnable": learnable, "interval": list(interval)}
    error = minimax_errors(name, interval)
    for b in sorted(bits):
        start = time.perf_counter()
        degree, err = minimal_degree(error, 2.0 ** -b, max_degree)
        row[f"degree_2^-{b}"] = degree
        row[f"error_2^-{b}"] = err
        row[f"seconds_2^-{b}"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 12])
    parser.add_argument("--interval", type=float, nargs=2, default=[-8.0, 8.0])
    parser.add_argument("--max-degree", type=int, default=1023)
    parser.add_argument("--jobs", type=int, default=1, help="activations searched in parallel processes")
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    interval = (args.interval[0], args.interval[1])
    task = functools.partial(degrees_row, interval=interval, bits=args.bits, max_degree=args.max_degree)
    if args.jobs > 1:
        with multiprocessing.Pool(args.jobs) as pool:
            rows = pool.map(task, list(LITERATURE))
    else:
        rows = [task(name) for name in LITERATURE]

    def shown(degree: int | None) -> str:
        return str(degree) if degree is not None else f"> {args.max_degree}"

    lo, hi = interval
    print(f"| name | formula | learnable parameters | " + " | ".join(
        f"degree for 2^-{b} on [{lo:g}, {hi:g}]" for b in args.bits) + " |")
    print("|---|---|---|" + "---|" * len(args.bits))
    for row in rows:
        params = ", ".join(row["learnable"]) or "none"
        degrees = " | ".join(shown(row[f"degree_2^-{b}"]) for b in args.bits)
        formula = row["formula"].replace("|", "\\|")  # a bar inside a cell would end it
        print(f"| {row['class']} (`{row['activation']}`) | {formula} | {params} | {degrees} |")
    print(finish(meter, rows))


if __name__ == "__main__":
    main()
