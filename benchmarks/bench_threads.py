"""Training-step time against torch's thread count, for networks from the digits CNN to ResNet-20.

Usage: python benchmarks/bench_threads.py [--threads 1 2] [--steps 20] [--rounds 3]

For each network: forward + backward + AdamW on batches of 64 random inputs, ``--steps`` steps per
timing, the thread counts interleaved (1, 2, 1, 2, ...) for ``--rounds`` rounds so machine load
hits each alike. Prints seconds per step (median over rounds) and CPU seconds per step for each
thread count, the work (multiply-adds per step, what :func:`polyact.threads.choose_threads` looks
at) and the count it chooses; then wall, CPU and load; then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from machine import Meter, cpu_seconds
from polyact.models import build_model
from polyact.threads import choose_threads, macs_per_sample, use_threads

NETWORKS = {  # name -> (architecture, input shape, keyword arguments)
    "digits mlp": ("mlp", (1, 8, 8), {}),
    "digits cnn": ("cnn", (1, 8, 8), {}),
    "digits32 cnn": ("cnn", (3, 32, 32), {}),
    "resnet20 3x32x32": ("resnet", (3, 32, 32), {"channels": (16,) * 3 + (32,) * 3 + (64,) * 3}),
}


def step_seconds(model: torch.nn.Module, shape: tuple[int, ...], steps: int, threads: int) -> tuple[float, float]:
    """Wall and CPU seconds per training step on ``threads`` threads."""
    use_threads(threads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, *shape), torch.randint(0, 10, (64,))
    model.train()
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - wall) / steps, (cpu_seconds() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args()
    meter = Meter()
    rows = []
    print(f"{'network':<18} {'MACs/step':>10} {'chosen':>6} " + " ".join(f"{f'{t} thr ms':>10} {'CPU ms':>7}"
                                                                      for t in args.threads))
    for name in args.networks:
        arch, shape, kwargs = NETWORKS[name]
        torch.manual_seed(0)
        model = build_model(arch, shape, 10, "relu", **kwargs)
        macs = macs_per_sample(model, shape) * 64
        timings: dict[int, list[tuple[float, float]]] = {t: [] for t in args.threads}
        for _ in range(args.rounds):
            for t in args.threads:
                timings[t].append(step_seconds(model, shape, args.steps, t))
        row = {"network": name, "macs_per_step": macs, "chosen": choose_threads(model, shape, 64, threads=None),
               **{f"wall_ms_{t}": 1e3 * statistics.median(w for w, _ in v) for t, v in timings.items()},
               **{f"cpu_ms_{t}": 1e3 * statistics.median(c for _, c in v) for t, v in timings.items()}}
        rows.append(row)
        print(f"{name:<18} {macs:>10.3g} {row['chosen']:>6} " + " ".join(
            f"{row[f'wall_ms_{t}']:>10.1f} {row[f'cpu_ms_{t}']:>7.1f}" for t in args.threads), flush=True)
    print(meter.line())
    print(json.dumps({"rows": rows, **meter.figures()}))


if __name__ == "__main__":
    main()
