"""``PolyAct``: the module that replaces a non-polynomial activation in a PANN.

It evaluates, in plaintext, exactly the polynomial the encrypted backend evaluates: a
:class:`ChebPoly`, a :class:`CompositePoly`, or one ``ChebPoly`` per channel. A polynomial is
only accurate on its interval and explodes outside it, so ``PolyAct`` counts inputs outside the
interval, warns once in eval mode, and raises in ``strict`` mode.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..approx.polynomials import ChebPoly, CompositePoly, Polynomial, chebval_torch, poly_from_dict

PolySpec = Union[Polynomial, Sequence[ChebPoly]]


class OutOfRangeError(ValueError):
    """An input fell outside a polynomial's fitted interval in strict mode."""


class OutOfRangeWarning(RuntimeWarning):
    """Inputs fell outside a polynomial's fitted interval (the counts are kept per layer)."""


class PolyAct(nn.Module):
    """Polynomial activation ``p(x)``.

    Parameters
    ----------
    poly : a ``ChebPoly``, a ``CompositePoly``, or a sequence of ``ChebPoly`` of equal degree,
        one per channel along ``channel_axis`` (per-channel polynomials).
    target : name of the activation it replaces (for reports).
    name : the layer's name in the model (for messages).
    strict : raise :class:`OutOfRangeError` when an input leaves the interval.
    monitor : count inputs outside the interval (on by default).

    ``clamp_in_training`` (off by default) clips inputs to the interval in training mode only,
    so that a polynomial cannot explode while weights move; robust training uses it together
    with a range penalty. Evaluation is never clipped: it is exactly what CKKS computes.
    """

    def __init__(
        self,
        poly: PolySpec,
        *,
        target: str | None = None,
        name: str = "",
        channel_axis: int = 1,
        strict: bool = False,
        monitor: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(poly, CompositePoly):
            stages, product, per_channel = [[s] for s in poly.stages], poly.product, False
        elif isinstance(poly, ChebPoly):
            stages, product, per_channel = [[poly]], None, False
        else:
            polys = list(poly)
            if not polys or not all(isinstance(p, ChebPoly) for p in polys):
                raise ValueError("per-channel polynomials must be a non-empty sequence of ChebPoly")
            if len({p.degree for p in polys}) != 1:
                raise ValueError("per-channel polynomials must share one degree (one evaluation schedule)")
            stages, product, per_channel = [polys], None, True
        self.target = target or getattr(poly, "target", None) or (stages[0][0].target)
        self.name = name
        self.channel_axis = channel_axis
        self.product = product
        self.per_channel = per_channel
        self.num_stages = len(stages)
        self.meta = {"method": getattr(poly, "method", None) if not per_channel else polys[0].method,
                     "max_error": _max_error(poly, per_channel),
                     "sign_error": getattr(poly, "sign_error", None)}
        for i, stage in enumerate(stages):
            coef = torch.tensor(np.array([p.coef for p in stage]), dtype=torch.float64).T  # (n + 1, C)
            interval = torch.tensor(np.array([p.interval for p in stage]), dtype=torch.float64)  # (C, 2)
            if not per_channel:
                coef, interval = coef[:, 0], interval[0]
            self.register_buffer(f"coef_{i}", coef)
            self.register_buffer(f"interval_{i}", interval)
        self.strict = strict
        self.monitor = monitor
        self.clamp_in_training = False
        self.inplace = False  # set where it replaces an in-place activation module (module swapping)
        self.reset_range_counters()

    # ---- evaluation -------------------------------------------------------------------
    def _shaped(self, tensor: torch.Tensor, x: torch.Tensor, lead: int) -> torch.Tensor:
        """View per-channel values (``lead`` leading axes, then C) to broadcast against ``x``."""
        if not self.per_channel:
            return tensor.to(x.dtype)
        axis = self.channel_axis % x.dim()
        if x.shape[axis] != tensor.shape[lead]:
            raise ValueError(
                f"{self.name or 'PolyAct'}: {tensor.shape[lead]} per-channel polynomials but the input "
                f"has {x.shape[axis]} channels on axis {axis}"
            )
        shape = list(tensor.shape[: lead + 1]) + [1] * (x.dim() - axis - 1)
        return tensor.to(x.dtype).reshape(shape)

    def bounds(self, x: torch.Tensor, stage: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval ends of ``stage``, broadcastable against ``x``."""
        interval = getattr(self, f"interval_{stage}")
        if self.per_channel:
            return self._shaped(interval[:, 0], x, 0), self._shaped(interval[:, 1], x, 0)
        return interval[0].to(x.dtype), interval[1].to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # like nn.ReLU(inplace=True): later readers of x see p(x)
            changed, x = x, x.clone()
            return changed.copy_(self._evaluate(x))
        return self._evaluate(x)

    def _evaluate(self, x: torch.Tensor) -> torch.Tensor:
        if self.monitor:
            self._check_range(x)
        s = x
        if self.training and self.clamp_in_training:
            low, high = self.bounds(x)
            s = torch.minimum(torch.maximum(x, low), high)
        for i in range(self.num_stages):
            a, b = self.bounds(x, i)
            coef = getattr(self, f"coef_{i}")
            coef = self._shaped(coef, x, 1) if self.per_channel else coef.to(x.dtype)
            s = chebval_torch((2.0 * s - (a + b)) / (b - a), coef)
        if self.product == "relu":
            return x * (1.0 + s) / 2.0
        if self.product == "abs":
            return x * s
        return s

    # ---- range monitoring -------------------------------------------------------------
    def reset_range_counters(self) -> None:
        self.n_seen = 0
        self.n_below = 0
        self.n_above = 0
        self.extreme = (float("inf"), float("-inf"))
        self._warned = False

    @torch.no_grad()
    def _check_range(self, x: torch.Tensor) -> None:
        a, b = self.bounds(x)
        below = int((x < a).sum())
        above = int((x > b).sum())
        self.n_seen += x.numel()
        self.n_below += below
        self.n_above += above
        if x.numel():
            self.extreme = (min(self.extreme[0], x.min().item()), max(self.extreme[1], x.max().item()))
        if below + above == 0:
            return
        lo, hi = self.interval
        where = f"their channel's interval (hull [{lo:.4g}, {hi:.4g}])" if self.per_channel else f"its interval [{lo:.4g}, {hi:.4g}]"
        message = (
            f"PolyAct {self.name or self.target!r}: {below + above} of {x.numel()} inputs outside {where}, "
            f"seen {self.extreme[0]:.4g} .. {self.extreme[1]:.4g}; the polynomial is inaccurate there. "
            "Recalibrate with representative data, raise the margin, or train with a range penalty"
        )
        if self.strict:
            raise OutOfRangeError(message)
        if not self.training and not self._warned:
            warnings.warn(message, OutOfRangeWarning, stacklevel=3)
            self._warned = True

    @property
    def out_of_range_fraction(self) -> float:
        """Fraction of monitored inputs that fell outside the interval."""
        return (self.n_below + self.n_above) / self.n_seen if self.n_seen else 0.0

    # ---- description ------------------------------------------------------------------
    @property
    def interval(self) -> tuple[float, float]:
        """The first stage's interval (per-channel: the hull of all channels)."""
        iv = self.interval_0
        if self.per_channel:
            return float(iv[:, 0].min()), float(iv[:, 1].max())
        return float(iv[0]), float(iv[1])

    @property
    def polynomial(self) -> PolySpec:
        """The current polynomial(s), rebuilt from the (possibly trained) coefficients."""
        stages = []
        for i in range(self.num_stages):
            coef = getattr(self, f"coef_{i}").detach().to("cpu", torch.float64)
            interval = getattr(self, f"interval_{i}").detach().to("cpu", torch.float64)
            if self.per_channel:
                stages.append([ChebPoly(coef[:, c].numpy(), interval[c].tolist(), target=self.target)
                               for c in range(coef.shape[1])])
            else:
                stages.append(ChebPoly(coef.numpy(), interval.tolist(), target=self.target,
                                       method=self.meta["method"]))
        if self.per_channel:
            return stages[0]
        if self.num_stages == 1 and self.product is None:
            poly = stages[0]
            poly.max_error = self.meta["max_error"]
            return poly
        return CompositePoly(stages, self.product, target=self.target, max_error=self.meta["max_error"],
                             sign_error=self.meta["sign_error"])

    @property
    def degree(self) -> int:
        return _degree(self.polynomial)

    @property
    def depth(self) -> int:
        poly = self.polynomial
        return poly[0].depth if isinstance(poly, list) else poly.depth

    def set_trainable(self, trainable: bool = True) -> "PolyAct":
        """Make the coefficients learnable parameters (the intervals, hence the depth, stay)."""
        for i in range(self.num_stages):
            key = f"coef_{i}"
            value = getattr(self, key).detach().clone()
            delattr(self, key)
            if trainable:
                self.register_parameter(key, nn.Parameter(value))
            else:
                self.register_buffer(key, value)
        return self

    def spec(self) -> dict[str, Any]:
        """JSON-ready description: target, channel axis and the polynomial(s)."""
        poly = self.polynomial
        data: dict[str, Any] = {"target": self.target, "channel_axis": self.channel_axis}
        if isinstance(poly, list):
            data["per_channel"] = [p.to_dict() for p in poly]
        else:
            data["polynomial"] = poly.to_dict()
        return data

    @classmethod
    def from_spec(cls, spec: dict[str, Any], name: str = "") -> "PolyAct":
        if "per_channel" in spec:
            poly: PolySpec = [ChebPoly.from_dict(d) for d in spec["per_channel"]]
        else:
            poly = poly_from_dict(spec["polynomial"])
        return cls(poly, target=spec.get("target"), name=name, channel_axis=spec.get("channel_axis", 1))

    def extra_repr(self) -> str:
        lo, hi = self.interval
        kind = "per-channel" if self.per_channel else ("composite" if self.num_stages > 1 or self.product else "")
        return f"{self.target}, degree={self.degree}, depth={self.depth}, interval=[{lo:.4g}, {hi:.4g}] {kind}".rstrip()


def _degree(poly: PolySpec) -> int:
    return poly[0].degree if isinstance(poly, list) else poly.degree


def _max_error(poly: PolySpec, per_channel: bool) -> float | None:
    if per_channel:
        errors = [p.max_error for p in poly]  # type: ignore[union-attr]
        return None if any(e is None for e in errors) else max(errors)
    return poly.max_error  # type: ignore[union-attr]


def polyact_layers(model: nn.Module) -> dict[str, PolyAct]:
    """All ``PolyAct`` modules of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PolyAct)}


def range_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per ``PolyAct`` layer: inputs seen, the fraction outside the interval, the extremes."""
    return {
        name: {
            "interval": list(m.interval),
            "seen": m.n_seen,
            "below": m.n_below,
            "above": m.n_above,
            "out_of_range_fraction": m.out_of_range_fraction,
            "extreme": list(m.extreme),
        }
        for name, m in polyact_layers(model).items()
    }


def out_of_range_fraction(model: nn.Module) -> float:
    """Fraction of all monitored activation inputs of ``model`` that fell outside their interval."""
    layers = polyact_layers(model).values()
    seen = sum(m.n_seen for m in layers)
    return sum(m.n_below + m.n_above for m in layers) / seen if seen else 0.0


def reset_range_counters(model: nn.Module) -> None:
    for m in polyact_layers(model).values():
        m.reset_range_counters()


def set_strict(model: nn.Module, strict: bool = True) -> None:
    """Make every ``PolyAct`` raise on inputs outside its interval (or stop raising)."""
    for m in polyact_layers(model).values():
        m.strict = strict
