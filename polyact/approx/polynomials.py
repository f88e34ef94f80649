"""Polynomials stored in the Chebyshev basis on an interval, and compositions of them.

A :class:`ChebPoly` on ``[a, b]`` is

    p(x) = sum_k c_k T_k(t),    t = (2x - (a + b)) / (b - a) in [-1, 1],

with ``T_k`` the Chebyshev polynomials of the first kind. High degrees are never stored in the
monomial basis: its coefficients grow like 2^degree and lose all precision. Evaluation uses
Clenshaw's recurrence, for numpy arrays and for torch tensors (differentiable in the input and in
the coefficients).

Under CKKS a degree-d polynomial costs ``ceil(log2(d + 1))`` multiplicative levels (its
``depth``), the lower bound met by the evaluator in :mod:`he_backend.eval.polyeval`.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence, Union

import numpy as np
import torch
from numpy.polynomial import chebyshev as npcheb

ArrayOrTensor = Union[np.ndarray, torch.Tensor, float]

PRODUCTS = {
    None: "s(x)",
    "relu": "x * (1 + s(x)) / 2",
    "abs": "x * s(x)",
}


def chebyshev_depth(degree: int) -> int:
    """Multiplicative depth ``ceil(log2(degree + 1))`` of a degree-``degree`` polynomial."""
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    return int(degree).bit_length()


def check_interval(interval: Sequence[float]) -> tuple[float, float]:
    """Return ``interval`` as a float pair ``(a, b)``, or raise if it is not finite with a < b."""
    try:
        a, b = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (a, b) of numbers, got {interval!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"interval must be finite, got ({a}, {b})")
    if not a < b:
        raise ValueError(f"interval must satisfy a < b, got ({a}, {b}); swap or widen the bounds")
    return a, b


def _summary(poly: Any) -> dict[str, Any]:
    """The JSON fields every polynomial type shares."""
    return {"type": poly.kind, "interval": list(poly.interval), "degree": poly.degree, "depth": poly.depth,
            "method": poly.method, "target": poly.target, "max_error": poly.max_error}


def chebval_torch(t: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``sum_k coef[k] T_k(t)`` by Clenshaw's recurrence, differentiable in ``t`` and ``coef``.

    ``coef`` has shape ``(n + 1, *S)`` where ``S`` broadcasts against ``t``; this gives one
    polynomial per channel when ``S`` matches the channel axis of ``t``.
    """
    n = coef.shape[0] - 1
    if n == 0:
        return coef[0] + torch.zeros_like(t)
    b1 = coef[n] + torch.zeros_like(t)
    b2 = torch.zeros_like(t)
    for k in range(n - 1, 0, -1):
        b1, b2 = coef[k] + 2.0 * t * b1 - b2, b1
    return coef[0] + t * b1 - b2


class ChebPoly:
    """A polynomial ``p(x) = sum_k c_k T_k(t)`` with ``t`` the affine image of ``x`` in [-1, 1].

    Parameters
    ----------
    coef : coefficients ``c_0 .. c_n`` in the Chebyshev basis.
    interval : ``(a, b)`` mapped onto [-1, 1]; the polynomial is meant for ``a <= x <= b``.
    max_error : certified ``max |f - p|`` on the fitted domain, if known.
    method, target : how and what was fitted (kept in the JSON for reports).
    """

    kind = "chebyshev"

    def __init__(
        self,
        coef: Sequence[float] | np.ndarray,
        interval: Sequence[float] = (-1.0, 1.0),
        *,
        max_error: float | None = None,
        method: str | None = None,
        target: str | None = None,
    ) -> None:
        coef = np.array(coef, dtype=np.float64).reshape(-1)
        if coef.size == 0:
            raise ValueError("a polynomial needs at least one coefficient")
        if not np.all(np.isfinite(coef)):
            raise ValueError("polynomial coefficients must be finite")
        self._coef = coef
        self._coef.setflags(write=False)
        self.interval = check_interval(interval)
        self.max_error = None if max_error is None else float(max_error)
        self.method = method
        self.target = target

    @property
    def coef(self) -> np.ndarray:
        """Chebyshev coefficients ``c_0 .. c_n`` (read-only)."""
        return self._coef

    @property
    def degree(self) -> int:
        return self._coef.size - 1

    @property
    def depth(self) -> int:
        """CKKS multiplicative depth ``ceil(log2(degree + 1))``."""
        return chebyshev_depth(self.degree)

    def to_unit(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """The affine map ``t = (2x - (a + b)) / (b - a)`` from ``[a, b]`` onto [-1, 1]."""
        a, b = self.interval
        return (2.0 * x - (a + b)) / (b - a)

    def __call__(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """Evaluate at ``x`` (numpy array, scalar, or torch tensor of any shape)."""
        if isinstance(x, torch.Tensor):
            coef = torch.tensor(self._coef, dtype=x.dtype, device=x.device)
            return chebval_torch(self.to_unit(x), coef)
        return npcheb.chebval(self.to_unit(np.asarray(x, dtype=np.float64)), self._coef)

    def to_monomial(self) -> np.ndarray:
        """Coefficients of ``p`` in powers of ``x`` (for display; ill-conditioned at high degree)."""
        series = npcheb.Chebyshev(self._coef, domain=list(self.interval))
        mono = series.convert(kind=np.polynomial.Polynomial).coef
        return np.pad(mono, (0, self.degree + 1 - mono.size))

    def affine_output(self, scale: float, shift: float = 0.0) -> "ChebPoly":
        """The polynomial ``scale * p(x) + shift`` on the same interval."""
        coef = scale * self._coef.copy()
        coef[0] += shift
        return ChebPoly(coef, self.interval, method=self.method, target=self.target)

    def is_odd(self, rtol: float = 1e-12) -> bool:
        """True when the even-index coefficients vanish and the interval is symmetric."""
        a, b = self.interval
        scale = max(np.abs(self._coef).max(), 1e-300)
        return a == -b and bool(np.all(np.abs(self._coef[0::2]) <= rtol * scale))

    def to_dict(self) -> dict[str, Any]:
        return {**_summary(self), "coefficients": self._coef.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChebPoly":
        if data.get("type", cls.kind) != cls.kind:
            raise ValueError(f"expected a '{cls.kind}' polynomial, got type {data.get('type')!r}")
        return cls(
            data["coefficients"],
            data["interval"],
            max_error=data.get("max_error"),
            method=data.get("method"),
            target=data.get("target"),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "ChebPoly":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        err = "" if self.max_error is None else f", max_error={self.max_error:.3e}"
        return (
            f"ChebPoly(degree={self.degree}, interval={self.interval}, depth={self.depth}"
            f"{err}, method={self.method!r}, target={self.target!r})"
        )


class CompositePoly:
    """A composition ``s = p_k o ... o p_1`` with an optional final product.

    ``product=None`` gives ``s(x)``; ``"relu"`` gives ``x * (1 + s(x)) / 2`` (ReLU from an
    approximate sign ``s``); ``"abs"`` gives ``x * s(x)``. The depth is the sum of the stage
    depths plus one level for the product.
    """

    kind = "composite"

    def __init__(
        self,
        stages: Sequence[ChebPoly],
        product: str | None = None,
        *,
        max_error: float | None = None,
        method: str | None = "composite",
        target: str | None = None,
        sign_error: float | None = None,
    ) -> None:
        if not stages:
            raise ValueError("a composite polynomial needs at least one stage")
        if product not in PRODUCTS:
            raise ValueError(f"product must be one of {sorted(map(str, PRODUCTS))}, got {product!r}")
        self.stages = list(stages)
        self.product = product
        self.max_error = None if max_error is None else float(max_error)
        self.method = method
        self.target = target
        self.sign_error = None if sign_error is None else float(sign_error)

    @property
    def alpha(self) -> float | None:
        """Precision of the sign part in bits, ``-log2(sign_error)``."""
        return None if not self.sign_error else -math.log2(self.sign_error)

    @property
    def interval(self) -> tuple[float, float]:
        return self.stages[0].interval

    @property
    def degree(self) -> int:
        return math.prod(p.degree for p in self.stages) + (1 if self.product else 0)

    @property
    def depth(self) -> int:
        return sum(p.depth for p in self.stages) + (1 if self.product else 0)

    def inner(self, x: ArrayOrTensor) -> ArrayOrTensor:
        """The composed stages ``s(x)`` without the final product."""
        s = x
        for stage in self.stages:
            s = stage(s)
        return s

    def __call__(self, x: ArrayOrTensor) -> ArrayOrTensor:
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x, dtype=np.float64)
        s = self.inner(x)
        if self.product == "relu":
            return x * (1.0 + s) / 2.0
        if self.product == "abs":
            return x * s
        return s

    def to_dict(self) -> dict[str, Any]:
        return {**_summary(self), "product": self.product, "sign_error": self.sign_error,
                "stages": [p.to_dict() for p in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompositePoly":
        if data.get("type") != cls.kind:
            raise ValueError(f"expected a '{cls.kind}' polynomial, got type {data.get('type')!r}")
        return cls(
            [ChebPoly.from_dict(d) for d in data["stages"]],
            data.get("product"),
            max_error=data.get("max_error"),
            method=data.get("method"),
            target=data.get("target"),
            sign_error=data.get("sign_error"),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        degrees = [p.degree for p in self.stages]
        err = "" if self.max_error is None else f", max_error={self.max_error:.3e}"
        return (
            f"CompositePoly(stage_degrees={degrees}, product={self.product!r}, "
            f"interval={self.interval}, depth={self.depth}{err})"
        )


Polynomial = Union[ChebPoly, CompositePoly]


def poly_from_dict(data: dict[str, Any]) -> Polynomial:
    """Rebuild a :class:`ChebPoly` or :class:`CompositePoly` from its ``to_dict()`` form."""
    kinds = {ChebPoly.kind: ChebPoly, CompositePoly.kind: CompositePoly}
    kind = data.get("type", ChebPoly.kind)
    if kind not in kinds:
        raise ValueError(f"unknown polynomial type {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].from_dict(data)


def poly_from_json(text: str) -> Polynomial:
    """Rebuild a polynomial from its ``to_json()`` text."""
    return poly_from_dict(json.loads(text))
