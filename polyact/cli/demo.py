"""The main job end to end on built-in data: ``polyact demo``.

Train the digits CNN, convert it at several polynomial degrees (plaintext trade-off sweep),
fine-tune robustly at the degrees that lose too much, pick the cheapest setting (lowest CKKS
depth) within ``max_loss`` accuracy points of the original, compile it, run real encrypted
inference on test images, and write a report folder: ``report.md``, ``report.json`` and PNG
plots (activation vs polynomial with its error, accuracy vs depth, encrypted latency vs
degree).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..convert.pipeline import convert
from ..data import digits
from ..models import build_model
from ..nn.poly_act import OutOfRangeWarning, polyact_layers
from ..plots import plot_fit, plot_latency, plot_tradeoff
from ..threads import allowed_cores, configure_threads
from ..tradeoff import TradeoffRow, measure, sweep
from ..train.loop import predict, train_classifier
from ..train.robust import RobustConfig, robust_finetune


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`; the defaults take about 80 s of CPU on one thread (the wall time grows
    with the machine's load: the report records both, and the load)."""

    activation: str = "relu"
    epochs: int = 15
    degrees: Sequence[int] = (2, 3, 5, 7, 15)
    robust_epochs: int = 20
    robust_settings: int = 3
    max_loss: float = 1.0
    samples: int = 128
    latency_degrees: Sequence[int] = (3, 7, 15, 31)
    seed: int = 0
    progress: bool = True
    threads: int | None = None  # torch threads; None: $POLYACT_THREADS, else chosen (1 for this CNN)


@dataclass
class DemoResult:
    """What the demo measured; ``to_dict`` is the content of ``report.json``."""

    config: dict[str, Any]
    baseline_accuracy: float
    sweep: list[dict[str, Any]]
    chosen: dict[str, Any]
    plan: dict[str, Any]
    encrypted: dict[str, Any]
    latency_vs_degree: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU time per step
    machine: dict[str, Any] = field(default_factory=dict)  # threads, cores, 1-min load at start and end

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        c, e = self.chosen, self.encrypted
        return "\n".join([
            f"original CNN ({self.config['activation']}): {self.baseline_accuracy:.2f}% on the digits test set",
            f"cheapest PANN within {self.config['max_loss']:g} pt: degree {c['degree']} ({c['method']}), depth "
            f"{c['depth']}, plaintext accuracy {c['accuracy']:.2f}%",
            f"CKKS: N={self.plan['params']['poly_modulus_degree']}, scale 2^{self.plan['params']['scale_bits']}, "
            f"{self.plan['samples_per_ciphertext']} images per ciphertext",
            f"encrypted on {e['samples']} test images: accuracy {e['accuracy']:.2f}%, agreement with plaintext "
            f"{e['agreement']:.1f}%, logits precision {e['precision_bits']:.1f} bits",
            f"latency: {e['latency_s']:.2f} s for one image (warm server), "
            f"{1000 * e['batch_seconds_per_sample']:.0f} ms per image in a batch",
        ])


def _robust_rows(model, data, degrees: Sequence[int], cfg: DemoConfig) -> tuple[list[TradeoffRow], dict[int, Any]]:
    rows, panns = [], {}
    reference = predict(model, data.x_test)
    bar = tqdm(degrees, desc="robust fine-tuning", disable=not cfg.progress)
    for degree in bar:
        bar.set_postfix_str(f"degree {degree}, {cfg.robust_epochs} epochs")  # the bar moves only between degrees
        start = time.perf_counter()
        result = robust_finetune(model, data, degree=degree, epochs=cfg.robust_epochs, seed=cfg.seed)
        measured = measure(result.pann, data.x_test, data.y_test, reference)
        rows.append(TradeoffRow("robust", degree, None, RobustConfig().margin, result.report.depth, *measured,
                                time.perf_counter() - start))
        panns[degree] = result.pann
    return rows, panns


def _encrypted_run(pann, data, samples: int, progress: bool) -> tuple[dict[str, Any], dict[str, Any], Any]:
    import he_backend
    from he_backend.eval.metrics import compare

    plan = he_backend.compile(pann.double(), data.input_shape, "batch")
    client = plan.client()
    server = he_backend.Server.from_bytes(plan.to_bytes(), client.public_context())
    x, y = data.x_test[:samples].double(), data.y_test[:samples]
    samples = len(x)
    per = plan.samples_per_ciphertext
    start = time.perf_counter()
    out = np.concatenate([client.decrypt(server.run(client.encrypt(x[i : i + per])))
                          for i in tqdm(range(0, samples, per), desc="encrypted inference (ciphertexts)",
                                        disable=not progress)])
    batch = time.perf_counter() - start
    with torch.no_grad():
        ref = pann(x).numpy()
    single = he_backend.compile(pann, data.input_shape, "sample")
    single_client = single.client()
    single_server = he_backend.Server.from_bytes(single.to_bytes(), single_client.public_context())
    single_server.run(single_client.encrypt(data.x_test[:1].double()))  # the first request encodes the weights (cached)
    start = time.perf_counter()
    single_client.decrypt(single_server.run(single_client.encrypt(data.x_test[1:2].double())))
    latency = time.perf_counter() - start
    encrypted = {
        "samples": samples,
        **compare(out, ref, y.numpy()),
        "batch_seconds_per_sample": batch / samples,
        "latency_s": latency,
    }
    return encrypted, plan.report(), plan


def _latency_vs_degree(plan, degrees: Sequence[int]) -> list[dict[str, Any]]:
    """Seconds to evaluate a degree-d polynomial on one full ciphertext at the plan's ring and scale."""
    from he_backend.protocol.profile import time_polynomial

    p = plan.params
    return [time_polynomial(d, p.scale_bits, min_n=p.poly_modulus_degree) for d in degrees]


def _markdown(result: DemoResult) -> str:
    lines = ["# polyact demo report", "", "```", result.summary(), "```", "",
             "## Plaintext trade-off (digits test set)", "",
             "| method | degree | depth | accuracy % | agreement % |", "|---|---|---|---|---|"]
    for r in result.sweep:
        lines.append(f"| {r['method']} | {r['degree']} | {r['depth']} | {r['accuracy']:.2f} | {r['agreement']:.1f} |")
    lines += ["", f"Original accuracy: {result.baseline_accuracy:.2f}%.", "",
              "## Encrypted inference", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.encrypted.items()]
    totals = result.plan["totals"]
    lines += ["", f"Plan: depth {result.plan['depth']}, {totals['ct_ct_mults']} ciphertext products, "
              f"{totals['pt_mults']} plaintext products, {totals['rotations']} rotations per ciphertext.", "",
              "## Polynomial evaluation latency vs degree (one ciphertext)", "",
              "| degree | depth | ct*ct | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['degree']} | {r['depth']} | {r['ct_ct_mults']} | {r['seconds']:.3f} |" for r in result.latency_vs_degree]
    lines += ["", "## Plots", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in result.files if f.endswith(".png")]
    lines += ["", "Time per step, wall / CPU seconds: " + ", ".join(
        f"{k} {v:.1f} / {result.cpu_seconds.get(k, float('nan')):.1f}" for k, v in result.seconds.items()) + "."]
    m = result.machine
    if m:
        lines += ["", f"In all: {sum(result.seconds.values()):.0f} s wall, {sum(result.cpu_seconds.values()):.0f} s CPU, "
                  f"{m['threads']} torch thread(s), {m['cores']} cores, 1-min load {m['load_start']:.2f} at the start "
                  f"and {m['load_end']:.2f} at the end (`polyact demo`)."]
    return "\n".join(lines) + "\n"


def run_demo(out_dir: str | Path = "polyact-demo", config: DemoConfig | None = None) -> DemoResult:
    """Run the whole path on the built-in digits data and write the report to ``out_dir``."""
    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    load_start = os.getloadavg()[0]
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(name: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        seconds[name], cpu_seconds[name] = now - clock, cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

    torch.manual_seed(cfg.seed)
    data = digits()
    model = build_model("cnn", data.input_shape, data.num_classes, cfg.activation)
    threads = configure_threads(model, data.input_shape, threads=cfg.threads)
    train_classifier(model, data, epochs=cfg.epochs, seed=cfg.seed, progress=cfg.progress)
    model.eval()
    lap("train")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        tradeoff = sweep(model, data, methods=("minimax",), degrees=cfg.degrees, name="digits CNN",
                         progress=cfg.progress)
        lap("convert")
        plain_best = tradeoff.cheapest(cfg.max_loss)
        cheaper = [d for d in sorted(cfg.degrees) if plain_best is None or d < plain_best.degree]
        robust_rows, robust_panns = _robust_rows(model, data, cheaper[-cfg.robust_settings:], cfg)
        tradeoff.rows += robust_rows
        lap("robust")

    chosen = tradeoff.cheapest(cfg.max_loss)
    if chosen is None:
        raise RuntimeError(f"no setting kept accuracy within {cfg.max_loss} pt; try higher degrees or more epochs")
    if chosen.method == "robust":
        pann = robust_panns[chosen.degree]
    else:
        pann, _ = convert(model, data.calibration(), degree=chosen.degree)
    encrypted, plan_report, plan = _encrypted_run(pann.eval(), data, cfg.samples, cfg.progress)
    lap("encrypted")
    latency = _latency_vs_degree(plan, cfg.latency_degrees)
    lap("latency")

    first = next(iter(polyact_layers(pann).values()))
    files = [str(plot_fit(first.polynomial, cfg.activation, out / "activation_fit.png",
                          title=f"{cfg.activation} vs degree-{first.degree} polynomial (first layer)")),
             str(plot_tradeoff(tradeoff, out / "accuracy_vs_depth.png", cfg.max_loss)),
             str(plot_latency(latency, out / "latency_vs_degree.png"))]
    result = DemoResult(asdict(cfg), tradeoff.baseline_accuracy, [asdict(r) for r in tradeoff.rows], asdict(chosen),
                        plan_report, encrypted, latency, seconds, files, cpu_seconds,
                        {"threads": threads, "cores": allowed_cores(), "load_start": load_start,
                         "load_end": os.getloadavg()[0]})
    (out / "report.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    (out / "report.md").write_text(_markdown(result))
    result.files += [str(out / "report.json"), str(out / "report.md")]
    return result
