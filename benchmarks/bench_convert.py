"""Original vs PANN accuracy on digits for minimax, Chebyshev interpolation and
histogram-weighted least squares, and the smallest network depth within 1 point.

Usage: python benchmarks/bench_convert.py [--seeds 3] [--degrees 1 2 3 7 15 31]
Accuracies are means over seeds (one trained model per seed). Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from polyact import data, models
from polyact.tradeoff import sweep
from polyact.train import loop as trainer

METHODS = ("minimax", "chebyshev", "lsq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--degrees", type=int, nargs="+", default=[1, 2, 3, 7, 15, 31])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"])
    parser.add_argument("--activations", nargs="+", default=["relu", "gelu", "silu", "aglu"])
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    digits = data.digits()
    summary = []
    for arch in args.models:
        for activation in args.activations:
            results = []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model = models.build_model(arch, digits.input_shape, 10, activation)
                trainer.train_classifier(model, digits, epochs=20 if arch == "cnn" else 30, seed=seed)
                results.append(sweep(model, digits, methods=METHODS, degrees=args.degrees,
                                     name=f"{arch}/{activation}/seed{seed}", progress=False))
            baseline = statistics.mean(r.baseline_accuracy for r in results)
            print(f"\n{arch} / {activation}: original accuracy {baseline:.2f}% (mean of {args.seeds} seeds)")
            print(f"{'degree':>6} {'depth':>5} " + " ".join(f"{m:>10}" for m in METHODS))
            for degree in args.degrees:
                accs, depth = {}, None
                for method in METHODS:
                    rows = [next(r for r in res.rows if r.method == method and r.degree == degree) for res in results]
                    accs[method] = statistics.mean(r.accuracy for r in rows)
                    depth = rows[0].depth
                print(f"{degree:>6} {depth:>5} " + " ".join(f"{accs[m]:>10.2f}" for m in METHODS))
                for method in METHODS:
                    summary.append({"model": arch, "activation": activation, "method": method, "degree": degree,
                                    "depth": depth, "accuracy": accs[method], "original_accuracy": baseline})
            cheapest = {}
            for method in METHODS:
                ok = [s for s in summary if s["model"] == arch and s["activation"] == activation
                      and s["method"] == method and s["accuracy"] >= baseline - 1.0]
                cheapest[method] = min((s["depth"] for s in ok), default=None)
            print("smallest depth within 1 point: " + ", ".join(f"{m} {d}" for m, d in cheapest.items()))
    print(finish(meter, summary))


if __name__ == "__main__":
    main()
