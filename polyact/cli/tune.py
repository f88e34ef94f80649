"""``polyact tune``: the cheapest PANN within an accuracy budget (:func:`polyact.tune`), with its
trade-off table. Registered by :mod:`polyact.cli.commands`, which lends its data/model options."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable

OBJECTIVES = ("latency", "depth")  # polyact.tuning.OBJECTIVES, written out: the parser imports no torch
METHODS = ("minimax", "lsq")  # polyact.tuning.pipeline.METHODS


def add(sub: argparse._SubParsersAction, command: Callable, add_data_and_model: Callable, load: Callable) -> None:
    """Add the ``tune`` verb; ``load(args)`` returns ``(data, model)`` as the other verbs do."""
    p = command(
        sub, "tune", "the cheapest PANN within an accuracy budget, with its trade-off table",
        "Choose per activation the method and degree (measured sensitivity + a dynamic program over levels),\n"
        "fine-tune with distillation only if conversion alone misses the budget, and write the PANN.",
        ["polyact tune --model cnn --dataset digits --max-loss 1 --out cnn.pann",
         "polyact tune --model trained.pt --dataset digits32 --objective depth --json",
         "polyact tune --model resnet --dataset digits32 --degrees 3 7 15 --finetune never"],
    )
    add_data_and_model(p)
    p.add_argument("--max-loss", type=float, default=1.0, help="accuracy points the PANN may lose (default: 1)")
    p.add_argument("--objective", choices=OBJECTIVES, default="latency",
                   help="minimise ciphertext products (latency, default) or CKKS levels (depth)")
    p.add_argument("--degrees", nargs="+", type=int, default=[3, 7, 15, 31], help="degrees tried per activation")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="fitting methods tried")
    p.add_argument("--alphas", nargs="*", type=float, default=[4.0, 6.0], help="composite ReLU precisions tried")
    p.add_argument("--finetune", choices=("auto", "always", "never"), default="auto",
                   help="fine-tune (distillation, no weight decay) when conversion misses the budget (auto), "
                        "always, or never")
    p.add_argument("--tune-epochs", type=int, default=6, help="fine-tuning epochs (default: 6)")
    p.add_argument("--distill", type=float, default=0.5, help="weight of the distillation loss (default: 0.5)")
    p.add_argument("--out", help="write the PANN to this file")
    p.add_argument("--json", action="store_true", help="print the result (choice, table, sensitivities) as JSON")
    p.set_defaults(run=lambda args: run(args, load))


def run(args: argparse.Namespace, load: Callable) -> int:
    from ..convert.storage import save_pann
    from ..tuning import tune

    data, model = load(args)
    result = tune(model, data, max_loss=args.max_loss, objective=args.objective, degrees=args.degrees,
                  methods=args.methods, alphas=args.alphas,
                  finetune={"auto": None, "always": True, "never": False}[args.finetune],
                  epochs=args.tune_epochs, distill=args.distill, seed=args.seed)
    if args.out:
        save_pann(result.pann, args.out, input_shape=data.input_shape,
                  input_range=(float(data.x_train.min()), float(data.x_train.max())))
    if args.json:
        print(json.dumps({**result.to_dict(), "out": args.out}))
        return 0
    print(result.table())
    print("per activation: " + ", ".join(f"{site} {label}" for site, label in result.choice.items()))
    if args.out:
        print(f"PANN written to {args.out}")
    return 0
