"""Figures (matplotlib, headless): activation vs polynomial, error curves, trade-off curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from .poly import Polynomial  # noqa: E402
from .target import as_target  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_fit(poly: Polynomial, fn: Any, path: str | Path, title: str | None = None) -> Path:
    """Draw ``fn`` and ``poly`` on the polynomial's interval (top) and the error ``fn - poly``
    (bottom); write a PNG to ``path``."""
    target = as_target(fn)
    a, b = poly.interval
    x = np.linspace(a, b, 2001)
    y, p = target(x), poly(x)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(x, y, label=target.name, linewidth=2)
    top.plot(x, p, "--", label=f"degree {poly.degree} ({poly.method})")
    top.legend()
    top.set_ylabel("value")
    top.set_title(title or f"{target.name} on [{a:g}, {b:g}], depth {poly.depth}")
    bottom.plot(x, y - p, color="tab:red")
    if poly.max_error is not None:
        for level in (poly.max_error, -poly.max_error):
            bottom.axhline(level, color="gray", linestyle=":")
    bottom.set_ylabel("error f - p")
    bottom.set_xlabel("x")
    return _save(fig, path)


def plot_tradeoff(result, path: str | Path) -> Path:
    """Accuracy vs network depth, one curve per method (best accuracy at each depth), with the
    original model's accuracy as a reference line; write a PNG to ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r.method for r in result.rows})
    for method in methods:
        best: dict[int, float] = {}
        for r in result.rows:
            if r.method == method and r.depth is not None:
                best[r.depth] = max(best.get(r.depth, -1.0), r.accuracy)
        depths = sorted(best)
        ax.plot(depths, [best[d] for d in depths], marker="o", label=method)
    ax.axhline(result.baseline_accuracy, color="black", linestyle="--", linewidth=1, label="original")
    ax.axhline(result.baseline_accuracy - 1.0, color="gray", linestyle=":", linewidth=1, label="original - 1 pt")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("network depth (CKKS levels)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0.0, min((r.accuracy for r in result.rows), default=0.0) - 5.0), 100.5)
    ax.set_title(f"{result.model}: accuracy vs depth")
    ax.legend()
    return _save(fig, path)


def plot_robust(results: list[dict], path: str | Path) -> Path:
    """Accuracy vs precision alpha (mean +- std) for each training arm, one panel per model
    and activation, as produced by ``benchmarks/robust_training.py``."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results):
        for arm, series in result["accuracy"].items():
            alphas = sorted(series, key=float)
            means = [series[a][0] for a in alphas]
            stds = [series[a][1] for a in alphas]
            ax.errorbar([float(a) for a in alphas], means, yerr=stds, marker="o", capsize=3, label=arm)
        original = max(result["original"].values())
        ax.axhline(original - 0.5, color="gray", linestyle=":", linewidth=1, label="original - 0.5 pt")
        ax.set_title(f"{result['model']} / {result['activation']}")
        ax.set_xlabel("precision alpha (bits)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), 100.5)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency(rows: list[dict], path: str | Path) -> Path:
    """Encrypted polynomial evaluation time vs degree (rows with ``degree``, ``seconds``,
    ``depth``), annotated with the depth; write a PNG to ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    degrees = [r["degree"] for r in rows]
    ax.plot(degrees, [r["seconds"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"depth {r['depth']}", (r["degree"], r["seconds"]), textcoords="offset points", xytext=(4, -12))
    ax.set_xscale("log", base=2)
    ax.set_xticks(degrees, [str(d) for d in degrees])
    ax.set_xlabel("polynomial degree")
    ax.set_ylabel("seconds per ciphertext")
    ax.set_title(f"encrypted polynomial evaluation, N={rows[0].get('N', '?')}")
    return _save(fig, path)
