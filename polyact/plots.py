"""Figures (matplotlib, headless): activation vs polynomial, error curves, trade-off curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .approx.polynomials import Polynomial  # noqa: E402
from .approx.targets import as_target  # noqa: E402


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


def setting_label(row) -> str:
    """How a trade-off point is named on plots: its degree (``d=7``) or composite precision (``α=8``)."""
    return f"α={row.alpha:g}" if row.alpha is not None else f"d={row.degree}"


def tradeoff_figure(result, max_loss: float = 1.0) -> plt.Figure:
    """Accuracy vs network depth of a :class:`polyact.tradeoff.TradeoffResult`: one curve per method
    through its best accuracy at each depth, every point labelled with the setting that reached it
    (:func:`setting_label`); the original accuracy and the budget ``original - max_loss`` as lines;
    the cheapest setting within the budget (``result.cheapest(max_loss)``) starred and named."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    labelled: dict[tuple[int, float], int] = {}  # labels already at a point: stack the next one below
    for method in sorted({r.method for r in result.rows}):
        best: dict[int, Any] = {}
        for r in result.rows:
            if r.method == method and r.depth is not None and r.accuracy > getattr(best.get(r.depth), "accuracy", -1.0):
                best[r.depth] = r
        points = [best[d] for d in sorted(best)]
        (line,) = ax.plot([r.depth for r in points], [r.accuracy for r in points], marker="o", label=method)
        for r in points:
            stacked = labelled[r.depth, r.accuracy] = labelled.get((r.depth, r.accuracy), -1) + 1
            ax.annotate(setting_label(r), (r.depth, r.accuracy), textcoords="offset points",
                        xytext=(12, 3 - 10 * stacked), fontsize=8, color=line.get_color())  # clear of the star (radius 10 pt)
    ax.axhline(result.baseline_accuracy, color="black", linestyle="--", linewidth=1, label="original")
    ax.axhline(result.baseline_accuracy - max_loss, color="gray", linestyle=":", linewidth=1,
               label=f"original - {max_loss:g} pt")
    chosen = result.cheapest(max_loss)
    if chosen is not None:
        ax.plot([chosen.depth], [chosen.accuracy], marker="*", markersize=18, color="gold", markeredgecolor="black",
                linestyle="none", label=f"cheapest within {max_loss:g} pt", zorder=3)
        ax.annotate(f"cheapest: {chosen.method} {setting_label(chosen)}, depth {chosen.depth}, {chosen.accuracy:.2f}%",
                    (chosen.depth, chosen.accuracy), textcoords="offset points", xytext=(15, -35), fontsize=9,
                    arrowprops={"arrowstyle": "->", "color": "black"})
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.12)  # room for the labels of the last points
    ax.set_xlabel("network depth (CKKS levels)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0.0, min((r.accuracy for r in result.rows), default=0.0) - 5.0), 100.5)
    ax.set_title(f"{result.model}: accuracy vs depth")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_tradeoff(result, path: str | Path, max_loss: float = 1.0) -> Path:
    """Write :func:`tradeoff_figure` as a PNG to ``path``."""
    return _save(tradeoff_figure(result, max_loss), path)


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


def latency_figure(rows: list[dict]) -> plt.Figure:
    """Encrypted polynomial evaluation time vs degree (rows with ``degree``, ``seconds``,
    ``depth``), each point annotated with its depth."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    degrees = [r["degree"] for r in rows]
    ax.plot(degrees, [r["seconds"] for r in rows], marker="o")
    for r in rows:  # above and left of the point: the curve rises to the right, the lowest point is at the bottom
        ax.annotate(f"depth {r['depth']}", (r["degree"], r["seconds"]), textcoords="offset points", xytext=(-8, 8),
                    ha="right")
    ax.set_xscale("log", base=2)
    ax.set_xticks(degrees, [str(d) for d in degrees])
    ax.margins(x=0.15, y=0.12)  # room for the first label on the left and the last one at the top
    ax.set_xlabel("polynomial degree")
    ax.set_ylabel("seconds per ciphertext")
    ax.set_title(f"encrypted polynomial evaluation, N={rows[0].get('N', '?')}")
    return fig


def plot_latency(rows: list[dict], path: str | Path) -> Path:
    """Write :func:`latency_figure` as a PNG to ``path``."""
    return _save(latency_figure(rows), path)
