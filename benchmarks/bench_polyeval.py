"""Encrypted polynomial evaluation on one full ciphertext: polyact's depth-optimal Chebyshev
BSGS vs TenSEAL's own ``CKKSVector.polyval`` (monomial basis) on the same parameters and inputs.

For each degree and polynomial (``gelu``: the minimax fit of GELU on [-8, 8]; ``dense``: a
random Chebyshev series with no zero coefficients) it reports levels consumed, ciphertext
products, time (median of --repeat runs) and precision in bits, with the lower bounds
ceil(log2(d + 1)) levels and the Paterson-Stockmeyer count sqrt(2d) + log2(d). The two sides
run interleaved (polyact, TenSEAL, polyact, ...) so machine load hits both alike; the ratio
polyact / TenSEAL is taken per pair and reported as median and range.

Usage: python benchmarks/bench_polyeval.py [--degrees 3 7 15 31 63] [--repeat 3] [--scale-bits 40]
Ends with one JSON line (a list of dicts).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import tenseal as ts
from numpy.polynomial import chebyshev as C

import polyact
from he_backend.eval.params import choose_params
from he_backend.eval.polyeval import PolyEvaluator
from he_backend.protocol.keys import KeyHolder
from polyact.approx.schedule import plan_polynomial


def series(kind: str, degree: int) -> np.ndarray:
    if kind == "gelu":
        return polyact.fit("gelu", (-8, 8), degree).coef
    return np.random.default_rng(degree).normal(size=degree + 1) / np.arange(1, degree + 2)


def bits(error: float) -> float:
    return -math.log2(error) if error > 0 else float("inf")


def tenseal_polyval(params, t: np.ndarray, coef: np.ndarray):
    """TenSEAL on the same ring, primes and scale: ``(run, check)`` where ``run()`` evaluates
    once and ``check(result)`` gives ``(precision bits, levels)``; ``None`` where TenSEAL cannot
    evaluate this polynomial (out of levels or scale out of bounds)."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(params.coeff_bits))
    context.global_scale = params.scale
    context.generate_relin_keys()
    vector = ts.ckks_vector(context, t.tolist())
    monomial = C.cheb2poly(coef).tolist()
    try:
        vector.polyval(monomial)
    except (ValueError, RuntimeError):
        return None

    def check(result) -> tuple[float, int]:
        levels = vector.ciphertext()[0].coeff_modulus_size() - result.ciphertext()[0].coeff_modulus_size()
        return bits(float(np.abs(np.array(result.decrypt()) - C.chebval(t, coef)).max())), levels

    return (lambda: vector.polyval(monomial)), check


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degrees", type=int, nargs="+", default=[3, 7, 15, 31, 63])
    parser.add_argument("--kinds", nargs="+", default=["gelu", "dense"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale-bits", type=int, default=40)
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    rows = []
    print(f"{'poly':<6} {'deg':>4} {'N':>6} {'levels':>6} {'bound':>5} {'ct*ct':>5} {'PS':>5} {'ms':>8} "
          f"{'bits':>5} | {'TenSEAL ms':>10} {'levels':>6} {'bits':>6} {'speedup':>7}")
    for degree in args.degrees:
        depth = math.ceil(math.log2(degree + 1))
        params = choose_params(depth, min_scale_bits=args.scale_bits, max_scale_bits=args.scale_bits)
        keys = KeyHolder(params)
        engine = keys.engine
        t = np.random.default_rng(1).uniform(-1, 1, engine.slots)
        ct = keys.encrypt(t)
        for kind in args.kinds:
            coef = series(kind, degree)
            plan = plan_polynomial(coef, scale_bits=params.scale_bits)
            peer = tenseal_polyval(params, t, coef)
            times, peer_times = [], []
            for _ in range(args.repeat):  # interleaved
                engine.counts.clear()
                seconds, out = timed(lambda: PolyEvaluator(engine).evaluate(plan, ct))
                times.append(seconds)
                if peer is not None:
                    seconds, peer_out = timed(peer[0])
                    peer_times.append(seconds)
            seconds = statistics.median(times)
            precision = bits(float(np.abs(keys.decrypt(out) - C.chebval(t, coef)).max()))
            levels = engine.level(ct) - engine.level(out)
            ts_seconds = statistics.median(peer_times) if peer else None
            ts_bits, ts_levels = peer[1](peer_out) if peer else (None, None)
            ratios = [a / b for a, b in zip(times, peer_times)]
            ratio = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)} if ratios else None
            ps = math.sqrt(2 * degree) + math.log2(degree)
            speedup = 1 / ratio["median"] if ratio else None
            rows.append({
                "polynomial": kind, "degree": degree, "poly_modulus_degree": params.poly_modulus_degree,
                "levels": levels, "level_lower_bound": depth, "ct_ct_mults": engine.counts["ct_ct_mul"],
                "ps_bound": ps, "seconds": seconds, "precision_bits": precision,
                "tenseal_polyval_seconds": ts_seconds, "tenseal_levels": ts_levels,
                "tenseal_precision_bits": ts_bits, "speedup": speedup, "ratio_polyact_over_tenseal": ratio,
            })
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            print(f"{kind:<6} {degree:>4} {params.poly_modulus_degree:>6} {levels:>6} {depth:>5} "
                  f"{engine.counts['ct_ct_mul']:>5} {ps:>5.1f} {1e3 * seconds:>8.1f} {precision:>5.1f} | "
                  f"{fmt(ts_seconds and 1e3 * ts_seconds, '10.1f'):>10} {fmt(ts_levels, 'd'):>6} "
                  f"{fmt(ts_bits, '6.1f'):>6} {fmt(speedup, '7.2f'):>7}")
    print(finish(meter, rows))


if __name__ == "__main__":
    main()
