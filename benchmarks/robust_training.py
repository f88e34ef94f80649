"""Robust training experiment: PANN accuracy vs approximation precision for
(a) a normally trained model (SGD with weight decay 5e-4), converted;
(b) the same recipe without weight decay, converted;
(c) (b) fine-tuned robustly at each precision (polyact.train.robust_finetune).

Precision alpha: ReLU uses composite sign approximations of precision 2^-alpha (Lee et al., as
in Zhang et al.); other activations use single minimax polynomials with max error
2^-alpha max(|a|, |b|) on each interval. Accuracies are mean +- std over seeds.

Usage: python benchmarks/robust_training.py [--models cnn resnet20] [--activations relu gelu]
       [--seeds 3] [--alphas 1 2 3 4 5 6 8 10 12] [--plot docs/robust_training.png]
Prints a table per model and activation, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from polyact import data, models, trainer
from polyact.convert import convert
from polyact.train import robust_finetune

ARCHITECTURES = {
    "cnn": ("cnn", {}),
    "resnet20": ("resnet", {"channels": (8,) * 3 + (16,) * 3 + (32,) * 3}),  # ResNet-20 layout, 19 activations
}
ARMS = ("a: weight decay", "b: no weight decay", "c: robust")


def precision(activation: str, alpha: float) -> dict:
    return {"alpha": alpha} if activation == "relu" else {"bits": alpha}


def train(arch: str, activation: str, digits: data.Dataset, weight_decay: float, seed: int) -> torch.nn.Module:
    name, kwargs = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = models.build_model(name, digits.input_shape, 10, activation, **kwargs)
    trainer.train_classifier(model, digits, epochs=30, optimizer="sgd", lr=0.05, weight_decay=weight_decay, seed=seed)
    return model


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def smallest_alpha(rows: dict[float, list[float]], original: float, tol: float = 0.5) -> float | None:
    ok = [a for a, accs in rows.items() if statistics.mean(accs) >= original - tol]
    return min(ok) if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet20"], choices=list(ARCHITECTURES))
    parser.add_argument("--activations", nargs="+", default=["relu", "gelu"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alphas", nargs="+", type=float, default=[1, 2, 3, 4, 5, 6, 8, 10, 12])
    parser.add_argument("--robust-epochs", type=int, default=30)
    parser.add_argument("--plot", help="draw accuracy vs alpha to this PNG")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # out-of-range counts are part of the measurement
    digits = data.digits()
    results = []
    for arch in args.models:
        for activation in args.activations:
            acc = {arm: {a: [] for a in args.alphas} for arm in ARMS}
            originals = {"a": [], "b": []}
            start = time.perf_counter()
            for seed in range(args.seeds):
                model_a = train(arch, activation, digits, 5e-4, seed)
                model_b = train(arch, activation, digits, 0.0, seed)
                originals["a"].append(trainer.evaluate(model_a, digits.x_test, digits.y_test))
                originals["b"].append(trainer.evaluate(model_b, digits.x_test, digits.y_test))
                for alpha in args.alphas:
                    kw = precision(activation, alpha)
                    for arm, model in ((ARMS[0], model_a), (ARMS[1], model_b)):
                        pann, _ = convert(model, digits.calibration(), **kw)
                        acc[arm][alpha].append(trainer.evaluate(pann, digits.x_test, digits.y_test))
                    robust = robust_finetune(model_b, digits, epochs=args.robust_epochs, seed=seed, **kw)
                    acc[ARMS[2]][alpha].append(trainer.evaluate(robust.pann, digits.x_test, digits.y_test))
            orig = {ARMS[0]: mean_std(originals["a"]), ARMS[1]: mean_std(originals["b"]), ARMS[2]: mean_std(originals["b"])}
            print(f"\n{arch} / {activation}: original accuracy (a) {orig[ARMS[0]][0]:.2f} +- {orig[ARMS[0]][1]:.2f}, "
                  f"(b) {orig[ARMS[1]][0]:.2f} +- {orig[ARMS[1]][1]:.2f}; {args.seeds} seeds, "
                  f"{time.perf_counter() - start:.0f} s")
            print(f"{'alpha':>5} " + " ".join(f"{arm:>22}" for arm in ARMS))
            for alpha in args.alphas:
                cells = [f"{mean_std(acc[arm][alpha])[0]:>14.2f} +- {mean_std(acc[arm][alpha])[1]:<5.2f}" for arm in ARMS]
                print(f"{alpha:>5g} " + " ".join(cells))
            needed = {arm: smallest_alpha(acc[arm], orig[arm][0]) for arm in ARMS}
            print("smallest alpha within 0.5 points of the original: "
                  + ", ".join(f"{arm.split(':')[0]} {needed[arm]}" for arm in ARMS))
            if needed[ARMS[0]] is not None and needed[ARMS[2]] is not None:
                print(f"robust training saves {needed[ARMS[0]] - needed[ARMS[2]]:g} bits of precision vs (a)")
            results.append({
                "model": arch, "activation": activation, "seeds": args.seeds,
                "original": {arm: orig[arm][0] for arm in ARMS},
                "accuracy": {arm: {str(a): mean_std(acc[arm][a]) for a in args.alphas} for arm in ARMS},
                "smallest_alpha": needed,
            })
    if args.plot:
        from polyact.plots import plot_robust

        plot_robust(results, args.plot)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
