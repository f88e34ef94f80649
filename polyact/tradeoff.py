"""Plaintext precision / accuracy / depth trade-offs of converting one model.

``sweep`` converts the model for every method x degree (or composite precision alpha) x
margin and measures, on the test set: accuracy, agreement with the original model's
predictions, the largest logit error, the network depth, and the fraction of activation inputs
outside their intervals. ``cheapest`` then picks the lowest-depth setting within a given
accuracy loss.
"""
from __future__ import annotations

import csv
import io
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .convert.pipeline import convert
from .data import Dataset
from .nn.poly_act import OutOfRangeWarning, out_of_range_fraction, reset_range_counters
from .train.loop import accuracy, predict


@dataclass
class TradeoffRow:
    """One converted setting and what it achieved on the test set."""

    method: str
    degree: int | None
    alpha: float | None
    margin: float
    depth: int | None
    accuracy: float
    agreement: float
    max_logit_error: float
    out_of_range: float
    seconds: float


@dataclass
class TradeoffResult:
    """All rows of a sweep plus the original model's accuracy."""

    model: str
    baseline_accuracy: float
    rows: list[TradeoffRow] = field(default_factory=list)

    def cheapest(self, max_loss: float = 1.0, method: str | None = None) -> TradeoffRow | None:
        """Lowest-depth row (then highest accuracy) losing at most ``max_loss`` accuracy points."""
        ok = [r for r in self.rows if r.depth is not None and r.accuracy >= self.baseline_accuracy - max_loss
              and (method is None or r.method == method)]
        return min(ok, key=lambda r: (r.depth, -r.accuracy)) if ok else None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "baseline_accuracy": self.baseline_accuracy,
                "rows": [asdict(r) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(TradeoffRow.__dataclass_fields__))
        writer.writeheader()
        for r in self.rows:
            writer.writerow(asdict(r))
        return buffer.getvalue()

    def table(self) -> str:
        head = (f"{'method':<10} {'deg':>4} {'alpha':>5} {'margin':>6} {'depth':>5} {'acc %':>6} "
                f"{'agree %':>7} {'max logit err':>13} {'out %':>6}")
        lines = [f"{self.model}: original accuracy {self.baseline_accuracy:.2f}%", head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.method:<10} {r.degree if r.degree is not None else '-':>4} "
                f"{r.alpha if r.alpha is not None else '-':>5} {r.margin:>6.2f} "
                f"{r.depth if r.depth is not None else '-':>5} {r.accuracy:>6.2f} {r.agreement:>7.2f} "
                f"{r.max_logit_error:>13.3e} {100 * r.out_of_range:>5.2f}%"
            )
        return "\n".join(lines)


def measure(pann: nn.Module, x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float, float]:
    """Accuracy and agreement with ``reference`` logits (percent), the largest logit error, and
    the fraction of activation inputs outside their intervals, for ``pann`` on ``(x, y)``."""
    reset_range_counters(pann)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # out-of-range inputs are counted instead
        logits = predict(pann, x)
    finite = torch.isfinite(logits).all(1)
    predicted = torch.where(finite, logits.nan_to_num().argmax(1), torch.full_like(y, -1))
    acc = 100.0 * (predicted == y).float().mean().item()
    agree = 100.0 * (predicted == reference.argmax(1)).float().mean().item()
    error = (logits - reference).abs().max().item() if finite.all() else float("inf")
    return acc, agree, error, out_of_range_fraction(pann)


def sweep(
    model: nn.Module,
    data: Dataset,
    *,
    methods: Sequence[str] = ("minimax", "chebyshev", "lsq"),
    degrees: Sequence[int] = (3, 7, 15, 31),
    alphas: Sequence[float] = (),
    margins: Sequence[float] = (0.1,),
    name: str = "model",
    progress: bool = True,
) -> TradeoffResult:
    """Convert ``model`` for every setting and measure it on ``data``'s test split.

    ``alphas`` adds composite (sign-based) settings for relu-like activations.
    """
    reference = predict(model, data.x_test)
    result = TradeoffResult(name, accuracy(reference, data.y_test))
    settings = [(m, d, None, g) for m, d, g in product(methods, degrees, margins)]
    settings += [("composite", None, a, g) for a, g in product(alphas, margins)]
    calib = data.calibration()
    for method, degree, alpha, margin in tqdm(settings, desc=f"sweep {name}", disable=not progress):
        start = time.perf_counter()
        kwargs = {"alpha": alpha} if alpha is not None else {"method": method, "degree": degree}
        pann, report = convert(model, calib, margin=margin, **kwargs)
        acc, agree, error, outside = measure(pann, data.x_test, data.y_test, reference)
        result.rows.append(TradeoffRow(method, degree, alpha, margin, report.depth, acc, agree, error, outside,
                                       time.perf_counter() - start))
    return result
