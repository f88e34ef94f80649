"""The conversion report: what each activation became and what the PANN costs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerReport:
    """One replaced activation.

    ``max_error`` is the certified fit error on the interval (for per-channel fits: the worst
    channel), ``calibration_error`` the largest error on the calibration inputs (including any
    outside the interval), ``out_of_range`` the fraction of calibration inputs outside it.
    """

    name: str
    op: str
    target: str
    method: str
    degree: int
    depth: int
    interval: tuple[float, float]
    observed: tuple[float, float]
    max_error: float | None
    calibration_error: float
    out_of_range: float
    per_channel: bool = False
    alpha: float | None = None


@dataclass
class ConversionReport:
    """Per-layer reports and network totals (depth in CKKS levels)."""

    layers: list[LayerReport]
    depth: int | None
    input_shape: tuple[int, ...]
    poly_evals_per_sample: int
    notes: list[str] = field(default_factory=list)

    @property
    def num_poly_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "num_poly_layers": self.num_poly_layers,
            "poly_evals_per_sample": self.poly_evals_per_sample,
            "input_shape": list(self.input_shape),
            "notes": list(self.notes),
            "layers": [asdict(layer) for layer in self.layers],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def table(self) -> str:
        """A fixed-width text table of the layers and totals."""
        head = (f"{'layer':<22} {'op':<14} {'method':<10} {'deg':>4} {'depth':>5} "
                f"{'interval':>20} {'fit err':>9} {'calib err':>9} {'out':>6}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            interval = f"[{r.interval[0]:.3g}, {r.interval[1]:.3g}]"
            fit_err = "-" if r.max_error is None else f"{r.max_error:.2e}"
            lines.append(
                f"{r.name[:22]:<22} {r.op[:14]:<14} {r.method[:10]:<10} {r.degree:>4} {r.depth:>5} "
                f"{interval:>20} {fit_err:>9} {r.calibration_error:>9.2e} {100 * r.out_of_range:>5.1f}%"
            )
        depth = "unknown (model not traceable)" if self.depth is None else str(self.depth)
        lines.append(f"network depth: {depth} levels; {self.num_poly_layers} polynomial layers; "
                     f"{self.poly_evals_per_sample} polynomial evaluations per sample")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
