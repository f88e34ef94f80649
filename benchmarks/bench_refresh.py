"""Interactive refresh on digits: the same PANN in one round (parameters for its whole depth)
and split into segments by ``max_levels`` (smaller parameters, refresh rounds with the client).

Per network and arm: rounds, bytes down/up per inference, ring dimension, top-1 agreement with
the plaintext PANN and precision in bits on --samples test images (batch packing, one
ciphertext), and the latency of one batch (encrypt, server and client rounds, decrypt; median
of --repeat, the arms interleaved).

Usage: python benchmarks/bench_refresh.py [--samples 8] [--repeat 3] [--sigma 64]
Ends with one JSON line (a list of dicts).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import he_backend
from he_backend.eval.metrics import compare
from polyact import data, models
from polyact.convert.pipeline import convert
from polyact.train import loop as trainer

NETWORKS = {"mlp": ({"hidden": (32,)}, 7, 4), "cnn": ({}, 2, 3)}  # build options, degree, max_levels


def _pann(name: str, digits, options: dict, degree: int):
    torch.manual_seed(0)
    model = models.build_model(name, digits.input_shape, digits.num_classes, "relu", **options)
    trainer.train_classifier(model, digits, epochs=15, seed=0)
    pann, _ = convert(model, digits, degree=degree)
    return pann.double().eval()


def _once(plan, client, server, x):
    rounds = he_backend.Rounds()
    start = time.perf_counter()
    out = client.decrypt(he_backend.run_interactive(client, server, client.encrypt(x), rounds))
    return out, time.perf_counter() - start, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sigma", type=int, default=he_backend.MaskPolicy().sigma)
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    digits = data.digits()
    x, labels = digits.x_test[: args.samples].double(), digits.y_test[: args.samples].numpy()
    rows = []
    for name, (options, degree, levels) in NETWORKS.items():
        pann = _pann(name, digits, options, degree)
        with torch.no_grad():
            reference = pann(x).numpy()
        arms = {"one round": he_backend.compile(pann, digits.input_shape, "batch"),
                f"max_levels={levels}": he_backend.compile(pann, digits.input_shape, "batch", max_levels=levels,
                                                           mask=he_backend.MaskPolicy(sigma=args.sigma))}
        pairs = {}
        for arm, plan in arms.items():
            client = plan.client()
            pairs[arm] = (plan, client, he_backend.Server.from_bytes(plan.to_bytes(), client.public_context()))
        seconds = {arm: [] for arm in arms}
        last = {}
        for _ in range(args.repeat):  # interleaved
            for arm, (plan, client, server) in pairs.items():
                out, elapsed, rounds = _once(plan, client, server, x.numpy())
                seconds[arm].append(elapsed)
                last[arm] = (out, rounds)
        for arm, (plan, _, _) in pairs.items():
            out, rounds = last[arm]
            figures = compare(out, reference, labels)
            rows.append({"network": name, "degree": degree, "arm": arm, "depth": plan.depth,
                         "poly_modulus_degree": plan.params.poly_modulus_degree, "scale_bits": plan.params.scale_bits,
                         "sigma": plan.mask.sigma if plan.cuts else None, **rounds.totals(),
                         "agreement": figures["agreement"], "precision_bits": round(figures["precision_bits"], 2),
                         "seconds": round(statistics.median(seconds[arm]), 3)})
            print(f"{name:4} {arm:13} N={rows[-1]['poly_modulus_degree']:5} depth {plan.depth:2} "
                  f"rounds {rows[-1]['rounds']} down {rows[-1]['bytes_down'] / 1e6:5.2f} MB "
                  f"up {rows[-1]['bytes_up'] / 1e6:5.2f} MB agreement {figures['agreement']:5.1f}% "
                  f"bits {figures['precision_bits']:5.1f} {rows[-1]['seconds']:6.2f} s")
        base = rows[-2]["seconds"]
        rows[-1]["seconds_ratio_to_one_round"] = round(rows[-1]["seconds"] / base, 3)
    print(finish(meter, rows))


if __name__ == "__main__":
    main()
