"""Robust training, measured fairly: PANN accuracy vs approximation precision for four arms that
start from the same pre-trained checkpoint and get the same number of optimiser steps.

Per (model, activation, seed): pre-train once (SGD + weight decay 5e-4, the usual recipe), then
fine-tune the checkpoint for ``--finetune-epochs`` (same batch size, so the same steps) as
  baseline   SGD + weight decay 5e-4, exact activations (the SOTA-style recipe), converted;
  no_wd      the same without weight decay, converted;
  control    robust_finetune's recipe (AdamW, no weight decay, mixup, range penalty) with the
             exact activations (perturbation=None), converted;
  robust     the same recipe trained through the polynomials at precision --poly-bits
             (perturbation="polynomial"), then converted at every alpha;
  robust_wc  the same recipe with worst-case (sign-gradient) perturbations in the error band of
             precision 2^-band_bits (perturbation="worst_case"), converted.
Each fine-tuned model is converted at every alpha of the sweep. One precision axis for all arms:
minimax max error 2^-alpha x interval bound for smooth activations (``bits=alpha``), composite
sign precision 2^-alpha for ReLU (``alpha=alpha``), whose ReLU error is also <= 2^-alpha x bound.
"Original" is the pre-trained checkpoint's exact accuracy. The accuracy bar is the control's
mean exact accuracy (the best exact model this budget gives) minus 0.5 points; an arm's needed
alpha is the smallest whose mean accuracy over seeds meets it.

``--allocate`` adds per-layer precision allocation (polyact.train.allocate) on the robust model of the
first seed, from its smallest uniform alpha, decided on half of the test set and reported on
the other half.

Usage: python benchmarks/robust_training.py --dataset digits32 --models resnet20
       --activations relu gelu --seeds 3 --device cuda --jobs 6 --out docs/robust_training.json
Jobs (model, activation, seed) run in parallel processes. Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from polyact import data as datasets
from polyact import models
from polyact.convert.pipeline import convert
from polyact.nn.poly_act import polyact_layers
from polyact.train import loop as trainer
from polyact.train.allocate import Candidates, greedy_allocate
from polyact.train.robust import robust_finetune

ARCHITECTURES = {
    "cnn": ("cnn", {}),
    "resnet20": ("resnet", {"channels": (16,) * 3 + (32,) * 3 + (64,) * 3}),  # ResNet-20: 19 activations
}
ARMS = ("baseline", "no_wd", "control", "robust", "robust_wc")
SOTA_WEIGHT_DECAY = 5e-4
TOLERANCE = 0.5  # accuracy points


def precision(activation: str, alpha: float) -> dict:
    """The common precision axis: composite sign precision for ReLU, relative minimax error otherwise."""
    return {"alpha": alpha} if activation == "relu" else {"bits": alpha}


def to_device(ds: datasets.Dataset, device: str) -> datasets.Dataset:
    return datasets.Dataset(ds.name, ds.x_train.to(device), ds.y_train.to(device), ds.x_test.to(device),
                            ds.y_test.to(device))


def sgd(model: torch.nn.Module, ds: datasets.Dataset, epochs: int, lr: float, weight_decay: float, seed: int) -> None:
    trainer.train_classifier(model, ds, epochs=epochs, optimizer="sgd", lr=lr, weight_decay=weight_decay,
                             batch_size=64, seed=seed)


def convert_on_cpu(model: torch.nn.Module, calib: torch.Tensor, device: str, **kwargs) -> tuple[torch.nn.Module, dict]:
    """Convert on the CPU. The calibration batches come as a one-pass iterator, so the report
    skips lowering the whole network (costly at 32x32); ``poly_depth`` is the sum of the
    activation layers' depths, all on the main path of these models."""
    pann, report = convert(copy.deepcopy(model).cpu(), iter(calib.split(256)), **kwargs)
    return pann.to(device), {"poly_depth": sum(layer.depth for layer in report.layers)}


def finetune_arms(checkpoint: torch.nn.Module, ds: datasets.Dataset, activation: str, args, seed: int) -> dict:
    """The four fine-tuned models (original activations), equal epochs and batch size."""
    arms = {}
    for arm, wd in (("baseline", SOTA_WEIGHT_DECAY), ("no_wd", 0.0)):
        arms[arm] = copy.deepcopy(checkpoint)
        sgd(arms[arm], ds, args.finetune_epochs, args.finetune_lr, wd, seed)
    band = args.band_bits[activation]
    common = dict(epochs=args.finetune_epochs, lr=args.robust_lr, batch_size=64, seed=seed, mixup=args.mixup,
                  range_penalty=args.range_penalty, weight_decay=0.0, calibration_size=args.calibration_size, report_depth=False,
                  **precision(activation, band))
    arms["control"] = robust_finetune(checkpoint, ds, perturbation=None, **common).model
    arms["robust"] = robust_finetune(checkpoint, ds, perturbation="polynomial",
                                     **{**common, **precision(activation, args.poly_bits[activation])}).model
    arms["robust_wc"] = robust_finetune(checkpoint, ds, perturbation="worst_case", band_bits=band, **common).model
    return arms


def allocation_entry(model: torch.nn.Module, ds: datasets.Dataset, calib: torch.Tensor, activation: str,
                     uniform: float, original: float, alphas: list[float], device: str) -> dict:
    """Greedy per-layer precisions for ``model`` from its uniform alpha, chosen on half the
    test set (``min_accuracy`` = original - tolerance there) and checked on the other half."""
    half = len(ds.x_test) // 2
    order = torch.randperm(len(ds.x_test), generator=torch.Generator().manual_seed(0)).to(ds.x_test.device)
    pick, check = order[:half], order[half:]
    candidates = Candidates(lambda a: convert_on_cpu(model, calib, device, **precision(activation, a))[0],
                            [a for a in alphas if a <= uniform])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def accuracy_on(assignment, idx):
            return trainer.evaluate(candidates.build(assignment), ds.x_test[idx], ds.y_test[idx])

        bar = accuracy_on({n: uniform for n in candidates.layers}, pick)
        result = greedy_allocate(candidates.layers, lambda a: accuracy_on(a, pick), uniform,
                                 min(bar, original) - TOLERANCE, floor=min(alphas))
        uniform_check = accuracy_on({n: uniform for n in candidates.layers}, check)
        allocated_check = accuracy_on(result.alphas, check)
    specs = {}
    for label, assignment in (("uniform", {n: uniform for n in candidates.layers}), ("allocated", result.alphas)):
        pann = candidates.build(assignment)
        specs[label] = {"poly_depth": sum(m.depth for m in polyact_layers(pann).values()),
                        "layers": {n: {"alpha": assignment[n], "spec": m.spec()} for n, m in polyact_layers(pann).items()}}
    return {"uniform_alpha": uniform, "alphas": result.alphas, "evaluations": result.evaluations,
            "accuracy_pick_half": {"uniform": bar, "allocated": result.accuracy},
            "accuracy_check_half": {"uniform": uniform_check, "allocated": allocated_check},
            "uniform": specs["uniform"], "allocated": specs["allocated"]}


def save_job(out: dict, args) -> None:
    if args.job_dir:
        Path(args.job_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.job_dir) / ("_".join(map(str, out["job"])) + ".json")).write_text(json.dumps(out))


def run_job(job: tuple[str, str, int], args) -> dict:
    """Pre-train, fine-tune the four arms, convert at every alpha; rows for one (model, activation, seed)."""
    arch, activation, seed = job
    torch.set_num_threads(max(1, args.threads))
    warnings.simplefilter("ignore", RuntimeWarning)  # out-of-range inputs are part of the measurement
    start = time.perf_counter()
    cpu_data = datasets.load_dataset(args.dataset)
    ds = to_device(cpu_data, args.device)
    calib = cpu_data.calibration(args.calibration_size)
    name, kwargs = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    checkpoint = models.build_model(name, ds.input_shape, ds.num_classes, activation, **kwargs).to(args.device)
    sgd(checkpoint, ds, args.pretrain_epochs, args.pretrain_lr, SOTA_WEIGHT_DECAY, seed)
    original = trainer.evaluate(checkpoint, ds.x_test, ds.y_test)
    arms = finetune_arms(checkpoint, ds, activation, args, seed)
    rows = []
    alphas = args.alphas[activation]
    print(f"job {job}: trained in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    for arm, model in arms.items():
        exact = trainer.evaluate(model, ds.x_test, ds.y_test)
        for alpha in alphas:
            pann, info = convert_on_cpu(model, calib, args.device, **precision(activation, alpha))
            rows.append({"model": arch, "activation": activation, "arm": arm, "alpha": alpha, "seed": seed,
                         "accuracy": trainer.evaluate(pann, ds.x_test, ds.y_test), "exact_accuracy": exact,
                         "original_accuracy": original, **info})
    out = {"rows": rows, "seconds": time.perf_counter() - start, "job": list(job)}
    save_job(out, args)  # now, and again with the allocation
    if args.allocate and seed == 0:
        robust = [r for r in rows if r["arm"] == "robust"]
        exact = robust[0]["exact_accuracy"] if robust else 0.0
        ok = [r["alpha"] for r in robust if r["accuracy"] >= exact - TOLERANCE]
        if ok:
            out["allocation"] = {"model": arch, "activation": activation, "arm": "robust", "seed": seed,
                                 **allocation_entry(arms["robust"], ds, calib, activation, min(ok), exact,
                                                    alphas, args.device)}
    print(f"job {job} done in {out['seconds']:.0f} s", file=sys.stderr, flush=True)
    save_job(out, args)
    return out


def mean_std(values: list[float]) -> list[float]:
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (model, activation): mean +- std per arm and alpha, each arm's needed alpha, and
    ``bits_saved_vs_control`` (control's needed alpha minus robust's; a lower bound ``>= x``
    when the control never gets there)."""
    out = []
    for key in sorted({(r["model"], r["activation"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["activation"]) == key]
        originals = {r["seed"]: r["original_accuracy"] for r in sel}
        original = mean_std(list(originals.values()))
        alphas = sorted({r["alpha"] for r in sel})
        accuracy, exact, needed = {}, {}, {}
        for arm in ARMS:
            arm_rows = [r for r in sel if r["arm"] == arm]
            exact[arm] = mean_std([r["exact_accuracy"] for r in arm_rows if r["alpha"] == alphas[0]])
            accuracy[arm] = {str(a): mean_std([r["accuracy"] for r in arm_rows if r["alpha"] == a]) for a in alphas}
        bar = exact["control"][0] - TOLERANCE
        for arm in ARMS:
            ok = [a for a in alphas if accuracy[arm][str(a)][0] >= bar]
            needed[arm] = min(ok) if ok else None
        if needed["robust"] is None:
            saved = None
        elif needed["control"] is None:
            saved = f">= {max(alphas) + 1 - needed['robust']:g}"
        else:
            saved = needed["control"] - needed["robust"]
        out.append({"model": key[0], "activation": key[1], "seeds": len(originals), "original": original, "bar": bar,
                    "exact_accuracy": exact, "accuracy": accuracy, "smallest_alpha": needed,
                    "bits_saved_vs_control": saved,
                    "bits_saved_vs_control_wc": None if needed["robust_wc"] is None or needed["control"] is None
                    else needed["control"] - needed["robust_wc"],
                    "bits_saved_vs_baseline": None if needed["robust"] is None or needed["baseline"] is None
                    else needed["baseline"] - needed["robust"]})
    return out


def print_tables(summary: list[dict]) -> None:
    for s in summary:
        print(f"\n{s['model']} / {s['activation']}: original {s['original'][0]:.2f} +- {s['original'][1]:.2f} "
              f"({s['seeds']} seeds); exact after fine-tuning: "
              + ", ".join(f"{arm} {s['exact_accuracy'][arm][0]:.2f}" for arm in ARMS))
        print(f"{'alpha':>5} " + " ".join(f"{arm:>16}" for arm in ARMS))
        for a in s["accuracy"]["robust"]:
            print(f"{float(a):>5g} " + " ".join(f"{s['accuracy'][arm][a][0]:>8.2f} +- {s['accuracy'][arm][a][1]:<4.2f}"
                                                for arm in ARMS))
        print("smallest alpha within 0.5 pt: " + ", ".join(f"{arm} {s['smallest_alpha'][arm]}" for arm in ARMS)
              + f"; bits saved vs control: {s['bits_saved_vs_control']}")


def parse_per_activation(values: list[str], cast=float) -> dict[str, object]:
    """``relu=1,2,3 gelu=4,5`` -> ``{"relu": [1.0, 2.0, 3.0], "gelu": [4.0, 5.0]}``."""
    out = {}
    for item in values:
        key, _, rest = item.partition("=")
        if not rest:
            raise SystemExit(f"expected ACTIVATION=VALUE[,VALUE...], got {item!r}")
        parsed = [cast(v) for v in rest.split(",")]
        out[key] = parsed if len(parsed) > 1 or "," in rest else parsed[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits32")
    parser.add_argument("--models", nargs="+", default=["resnet20"], choices=list(ARCHITECTURES))
    parser.add_argument("--activations", nargs="+", default=["relu", "gelu"])
    parser.add_argument("--pairs", nargs="+", help="MODEL:ACTIVATION pairs instead of --models x --activations")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alphas", nargs="+", default=["relu=2,3,4,5,6,7,8,9,10", "gelu=3,4,5,6,7,8,9,10,11,12"],
                        help="per activation: relu=2,3,4 gelu=4,5,6")
    parser.add_argument("--band-bits", nargs="+", default=["relu=4", "gelu=5"],
                        help="robust arm's error band 2^-b per activation: relu=4 gelu=5")
    parser.add_argument("--poly-bits", nargs="+", default=["relu=3", "gelu=5"],
                        help="robust arm: train through the polynomials at this precision, per activation")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--pretrain-lr", type=float, default=0.05)
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--robust-lr", type=float, default=1e-3)
    parser.add_argument("--mixup", type=float, default=0.2)
    parser.add_argument("--range-penalty", type=float, default=1.0)
    parser.add_argument("--calibration-size", type=int, default=512, help="training images that set the intervals")
    parser.add_argument("--allocate", action="store_true", help="per-layer precision allocation on seed 0's robust model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", help="write rows + summary JSON here")
    parser.add_argument("--job-dir", help="also write each job's result here as it finishes")
    parser.add_argument("--merge", help="only merge the job results in this folder (from --job-dir)")
    args = parser.parse_args()
    args.alphas = {k: [float(a) for a in (v if isinstance(v, list) else [v])] for k, v in parse_per_activation(args.alphas).items()}
    args.band_bits = parse_per_activation(args.band_bits)
    args.poly_bits = parse_per_activation(args.poly_bits)
    wanted = [p.split(":")[1] for p in args.pairs] if args.pairs else args.activations
    missing = [a for a in wanted if a not in args.alphas or a not in args.band_bits]
    if missing:
        raise SystemExit(f"give --alphas and --band-bits for {missing}")
    pairs = [tuple(p.split(":")) for p in args.pairs] if args.pairs else \
        [(m, a) for m in args.models for a in args.activations]
    jobs = [(m, a, args.first_seed + s) for m, a in pairs for s in range(args.seeds)]
    start = time.perf_counter()
    if args.merge:
        results = [json.loads(p.read_text()) for p in sorted(Path(args.merge).glob("*.json"))]
    elif args.jobs > 1:
        import torch.multiprocessing as mp

        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.starmap(run_job, [(job, args) for job in jobs])
    else:
        results = [run_job(job, args) for job in jobs]
    rows = [r for res in results for r in res["rows"]]
    summary = summarise(rows)
    print_tables(summary)
    report = {"dataset": args.dataset, "device": args.device, "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "seconds": time.perf_counter() - start, "job_seconds": [res["seconds"] for res in results],
              "bits_saved_vs_control": {f"{s['model']}/{s['activation']}": s["bits_saved_vs_control"] for s in summary},
              "summary": summary, "allocation": [res["allocation"] for res in results if "allocation" in res],
              "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("dataset", "seconds", "bits_saved_vs_control")}
                     | {"smallest_alpha": {f"{s['model']}/{s['activation']}": s["smallest_alpha"] for s in summary}}))


if __name__ == "__main__":
    main()
