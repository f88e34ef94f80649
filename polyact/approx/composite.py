"""Composite minimax approximation of sign, and of ReLU and |x| built from it.

A single polynomial needs degree ~1/eps to approximate ``sign`` on ``[-1, -eps] U [eps, 1]``;
a composition of small odd minimax polynomials needs only ~log(1/eps) depth (Lee, Lee, Kim, No:
"Minimax approximation of sign function by composite polynomial for homomorphic comparison").

Stage ``i`` is the odd minimax approximation of 1 on ``[lo_i, hi_i]`` (hence of sign on
``+-[lo_i, hi_i]``) with error ``delta_i``; it maps the guaranteed region into
``[1 - delta_i, 1 + delta_i]``, the next stage's domain. The stage error depends only on the
gap ratio ``tau = lo / hi`` (scale invariance), and a better ratio never hurts later stages, so
the best ratio reachable with total depth ``D`` obeys an exact dynamic programme over ``D``:

    best[D] = max_j  next_ratio(E_{2^j - 1}(best[D - j])),   next_ratio(d) = (1 - d) / (1 + d).

ReLU is ``x (1 + s(x)) / 2`` and ``|x|`` is ``x s(x)``: one more level each.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from .polynomials import ChebPoly, CompositePoly, chebyshev_depth
from .remez import odd_basis, remez

PRODUCT_OF = {"sign": None, "relu": "relu", "abs": "abs"}

_STAGE_DEPTHS = range(2, 7)  # stage degrees 3, 7, 15, 31, 63


@functools.lru_cache(maxsize=4096)
def _odd_sign_fit(degree: int, ratio: float) -> tuple[tuple[float, ...], float]:
    """Odd minimax approximation of 1 on ``[ratio, 1]``: (odd Chebyshev coefficients on
    [-1, 1], certified error)."""
    if degree < 1 or degree % 2 == 0:
        raise ValueError(f"sign stages need an odd degree >= 1, got {degree}")
    result = remez(np.ones_like, ratio, 1.0, (degree + 1) // 2, basis=odd_basis, tol=1e-9)
    return tuple(result.coef), result.max_error


def stage_error(degree: int, ratio: float) -> float:
    """Minimax error of an odd degree-``degree`` approximation of sign on ``+-[ratio, 1]``."""
    return _odd_sign_fit(degree, float(ratio))[1]


def sign_stage(degree: int, lo: float, hi: float, radius: float) -> tuple[ChebPoly, float]:
    """Odd minimax polynomial approximating sign on ``+-[lo, hi]``, stored on
    ``[-radius, radius]`` (``radius >= hi`` covers every input it will see). Returns the
    polynomial and its error ``delta``."""
    odd, delta = _odd_sign_fit(degree, lo / hi)
    unit = np.zeros(degree + 1)
    unit[1::2] = odd
    # p(x) = q(x / hi) with q on [-1, 1]; re-expand q(u * radius / hi) on [-radius, radius].
    nodes = np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1))
    values = np.polynomial.chebyshev.chebval(nodes * radius / hi, unit)
    coef = np.polynomial.chebyshev.chebfit(nodes, values, degree)
    coef[0::2] = 0.0
    poly = ChebPoly(coef, (-radius, radius), max_error=delta, method="minimax", target="sign")
    return poly, delta


def compose_sign(degrees: Sequence[int], eps: float) -> tuple[list[ChebPoly], float]:
    """Stages approximating sign on ``[-1, -eps] U [eps, 1]`` with the given odd degrees, and
    the certified sign error of the composition there."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    if not degrees:
        raise ValueError("give at least one stage degree")
    lo, hi, radius = eps, 1.0, 1.0
    stages = []
    for degree in degrees:
        poly, delta = sign_stage(int(degree), lo, hi, radius)
        stages.append(poly)
        peak = float(np.abs(poly(np.linspace(0.0, radius, 4001))).max())
        lo, hi = 1.0 - delta, 1.0 + delta
        radius = max(hi, peak)
    return stages, _certified_sign_error(stages, eps)


def _certified_sign_error(stages: Sequence[ChebPoly], eps: float) -> float:
    x = np.unique(np.concatenate([np.geomspace(eps, 1.0, 20001), np.linspace(eps, 1.0, 20001)]))
    s = x
    for stage in stages:
        s = stage(s)
    return float(np.abs(s - 1.0).max())


def optimal_sign_degrees(alpha: float, eps: float, max_depth: int = 48) -> tuple[int, ...]:
    """Odd stage degrees of minimal total depth whose composition approximates sign within
    ``2^-alpha`` on ``[-1, -eps] U [eps, 1]``; then each stage's degree is lowered as far as
    its depth class allows while the target still holds (fewer multiplications)."""
    target = 2.0 ** (-alpha)
    best: dict[int, tuple[float, tuple[int, ...]]] = {0: (eps, ())}
    for depth in range(1, max_depth + 1):
        options = []
        for j in _STAGE_DEPTHS:
            if depth - j in best:
                ratio, degrees = best[depth - j]
                degree = 2**j - 1
                options.append((stage_error(degree, ratio), degrees + (degree,)))
        if not options:
            continue
        delta, degrees = min(options)
        if delta <= target:
            return _lower_degrees(degrees, eps, target)
        best[depth] = ((1.0 - delta) / (1.0 + delta), degrees)
    raise ValueError(
        f"no composition of depth <= {max_depth} reaches 2^-{alpha} with eps = {eps:g}; "
        "lower alpha or raise eps"
    )


def _chain_error(degrees: Sequence[int], eps: float) -> float:
    ratio, delta = eps, 1.0
    for degree in degrees:
        delta = stage_error(degree, ratio)
        ratio = (1.0 - delta) / (1.0 + delta)
    return delta


def _lower_degrees(degrees: tuple[int, ...], eps: float, target: float) -> tuple[int, ...]:
    chosen = list(degrees)
    for i in reversed(range(len(chosen))):
        floor = 2 ** (chebyshev_depth(chosen[i]) - 1) + 1
        for candidate in range(floor + (floor % 2 == 0), chosen[i], 2):
            trial = chosen[:i] + [candidate] + chosen[i + 1 :]
            if _chain_error(trial, eps) <= target:
                chosen = trial
                break
    return tuple(chosen)


def fit_composite(
    kind: str,
    interval: tuple[float, float],
    *,
    alpha: float | None = None,
    degrees: Sequence[int] | None = None,
    eps: float | None = None,
) -> CompositePoly:
    """Composite approximation of ``kind`` in {"sign", "relu", "abs"} on ``interval``.

    The sign part has precision ``2^-alpha`` outside ``(-eps B, eps B)``, ``B = max |interval|``
    (``eps`` defaults to ``2^-alpha``). Give ``alpha`` to choose the stage degrees of minimal
    depth, or ``degrees`` (with ``alpha`` or ``eps``) to fix them.
    """
    if kind not in PRODUCT_OF:
        raise ValueError(
            f"composite fits approximate sign, relu or abs, not {kind!r}; use method='minimax'"
        )
    if alpha is None and eps is None:
        raise ValueError("composite fits need alpha (precision bits) or eps (gap half-width)")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    eps = 2.0 ** (-alpha) if eps is None else float(eps)
    if degrees is None:
        if alpha is None:
            raise ValueError("give alpha so that the stage degrees can be chosen, or give degrees")
        degrees = optimal_sign_degrees(alpha, eps)
    a, b = interval
    bound = max(abs(a), abs(b))
    stages, sign_error = compose_sign(degrees, eps)
    stages = [_rescale_first(stages[0], bound)] + stages[1:]
    poly = CompositePoly(stages, PRODUCT_OF[kind], target=kind, sign_error=sign_error)
    poly.max_error = _certified_error(poly, kind, bound, eps)
    return poly


def _rescale_first(stage: ChebPoly, bound: float) -> ChebPoly:
    """The first stage acts on ``x / bound``; the same coefficients on ``[-bound, bound]`` do."""
    return ChebPoly(stage.coef, (-bound, bound), max_error=stage.max_error, method="minimax", target="sign")


def _certified_error(poly: CompositePoly, kind: str, bound: float, eps: float) -> float:
    """Max error of the composite against its target on ``[-bound, bound]`` (for sign: outside
    the gap ``(-eps bound, eps bound)``)."""
    x = np.unique(
        np.concatenate([np.linspace(0.0, bound, 40001), bound * np.geomspace(eps / 64, 1.0, 20001)])
    )
    y = poly(x)
    if kind == "sign":
        keep = x >= eps * bound
        return float(np.abs(y[keep] - 1.0).max())
    exact = np.maximum(x, 0.0) if kind == "relu" else np.abs(x)
    negative = poly(-x)
    exact_neg = np.maximum(-x, 0.0) if kind == "relu" else np.abs(x)
    return float(max(np.abs(y - exact).max(), np.abs(negative - exact_neg).max()))
