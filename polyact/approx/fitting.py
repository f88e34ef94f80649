"""Fit polynomials to activations.

Methods
-------
``minimax``
    Best uniform approximation by the Remez exchange (:mod:`polyact.approx.remez`); the returned
    ``max_error`` is certified on a dense grid plus the located extrema.
``chebyshev``
    Interpolation at the Chebyshev points of the first kind (what Orion and OpenFHE use); within
    a factor ``2 + (2/pi) log(n+1)`` of minimax, usually much closer, never better.
``lsq``
    Least squares weighted by a density ``w`` of real inputs,
    ``min_p  integral w(x) (f(x) - p(x))^2 dx``: small error where a network's activations fall.
``composite``
    ``sign``, ``relu`` and ``abs`` as compositions of odd minimax polynomials reaching
    ``2^-alpha`` with minimal depth (:mod:`polyact.approx.composite`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence, Union

import numpy as np
from numpy.polynomial import chebyshev as npcheb

from .composite import PRODUCT_OF, fit_composite
from .polynomials import ChebPoly, Polynomial, check_interval
from .remez import remez
from .targets import Target, as_target

METHODS = ("minimax", "chebyshev", "lsq", "composite")
MAX_DEGREE = 1023

Weights = Union[Callable[[np.ndarray], np.ndarray], tuple, np.ndarray, None]


def _check_degree(degree: Any) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise ValueError(f"degree must be an integer, got {degree!r}")
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be between 0 and {MAX_DEGREE}, got {degree}")
    return int(degree)


def _unit_function(target: Target, interval: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """``f`` as a function of ``t`` in [-1, 1]."""
    a, b = interval
    return lambda t: target((a + b) / 2.0 + (b - a) / 2.0 * np.asarray(t))


def _unit_breakpoints(target: Target, interval: tuple[float, float]) -> list[float]:
    a, b = interval
    return [(2.0 * p - (a + b)) / (b - a) for p in target.breakpoints if a < p < b]


def certify(poly: Polynomial, fn: Any, interval: Sequence[float] | None = None, extra: Sequence[float] = ()) -> float:
    """``max |fn - poly|`` on a dense grid of ``interval`` (default: the polynomial's) plus the
    target's breakpoints and any ``extra`` points."""
    target = as_target(fn)
    a, b = check_interval(interval or poly.interval)
    unit = np.cos(np.pi * np.arange(4097) / 4096)
    x = np.concatenate(
        [np.linspace(a, b, 20001), (a + b) / 2 + (b - a) / 2 * unit, list(target.breakpoints), list(extra)]
    )
    x = x[(x >= a) & (x <= b)]
    return float(np.abs(target(x) - poly(x)).max())


def _density(weights: Weights, x: np.ndarray, interval: tuple[float, float]) -> np.ndarray:
    """Evaluate a density given as a callable, a ``(counts, edges)`` histogram or samples."""
    if callable(weights):
        w = np.asarray(weights(x), dtype=np.float64)
    elif isinstance(weights, tuple) and len(weights) == 2:
        counts, edges = (np.asarray(v, dtype=np.float64) for v in weights)
        if edges.size != counts.size + 1:
            raise ValueError("a histogram is (counts, edges) with len(edges) == len(counts) + 1")
        idx = np.searchsorted(edges, x, side="right") - 1
        inside = (idx >= 0) & (idx < counts.size)
        w = np.where(inside, counts[np.clip(idx, 0, counts.size - 1)], 0.0)
    else:
        samples = np.asarray(weights, dtype=np.float64).ravel()
        if samples.size == 0:
            raise ValueError("weights: an empty sample array")
        counts, edges = np.histogram(samples, bins=min(256, max(16, samples.size // 50)), range=interval)
        return _density((counts.astype(float), edges), x, interval)
    if w.shape != x.shape or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be a non-negative, finite density that is not zero everywhere")
    return w


def _fit_lsq(f_unit: Callable, interval: tuple[float, float], degree: int, weights: Weights, floor: float) -> np.ndarray:
    t = np.linspace(-1.0, 1.0, max(4001, 40 * (degree + 1)))
    a, b = interval
    x = (a + b) / 2.0 + (b - a) / 2.0 * t
    w = np.ones_like(t) if weights is None else _density(weights, x, interval)
    w = w / w.max() + floor
    sqrt_w = np.sqrt(w)
    vander = npcheb.chebvander(t, degree)
    return np.linalg.lstsq(vander * sqrt_w[:, None], f_unit(t) * sqrt_w, rcond=None)[0]


def fit(
    fn: Any,
    interval: Sequence[float],
    degree: int | Sequence[int] | None = None,
    method: str = "minimax",
    *,
    weights: Weights = None,
    weight_floor: float = 1e-3,
    alpha: float | None = None,
    eps: float | None = None,
) -> Polynomial:
    """Fit a polynomial to ``fn`` on ``interval = (a, b)``.

    Parameters
    ----------
    fn : an activation name (see :func:`polyact.available_activations`), an ``nn.Module``
        (its current parameters) or a callable on numpy arrays or torch tensors.
    interval : the inputs the polynomial must handle; the result is only accurate there.
    degree : polynomial degree (``composite``: optional tuple of odd stage degrees).
    method : ``"minimax"`` | ``"chebyshev"`` | ``"lsq"`` | ``"composite"``.
    weights : for ``lsq``: a density ``w(x)``, a ``(counts, edges)`` histogram, or samples.
    weight_floor : for ``lsq``: added to the normalised density so the fit stays bounded where
        no samples fell.
    alpha, eps : for ``composite``: sign precision ``2^-alpha`` outside ``(-eps B, eps B)``.

    Returns a :class:`ChebPoly` (or :class:`CompositePoly`) with a certified ``max_error``.
    """
    interval = check_interval(interval)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    target = as_target(fn)
    if method == "composite":
        if target.name not in PRODUCT_OF:
            raise ValueError(
                f"method='composite' approximates sign, relu or abs, not {target.name!r}; "
                "use method='minimax' for other activations"
            )
        degrees = None if degree is None else [_check_degree(d) for d in np.atleast_1d(degree)]
        return fit_composite(target.name, interval, alpha=alpha, degrees=degrees, eps=eps)
    if degree is None:
        raise ValueError(f"method={method!r} needs a degree (or use fit_to_tolerance)")
    degree = _check_degree(degree)
    f_unit = _unit_function(target, interval)
    breakpoints = _unit_breakpoints(target, interval)
    extra: np.ndarray = np.array([])
    if method == "minimax":
        result = remez(f_unit, -1.0, 1.0, degree + 1, breakpoints=breakpoints)
        if not result.converged:
            warnings.warn(
                f"Remez did not converge for {target.name!r} at degree {degree} on {interval} "
                f"after {result.iterations} iterations; max_error is certified but may exceed "
                "the best possible",
                RuntimeWarning,
                stacklevel=2,
            )
        coef = result.coef
        a, b = interval
        extra = (a + b) / 2.0 + (b - a) / 2.0 * result.reference
    elif method == "chebyshev":
        coef = npcheb.chebinterpolate(f_unit, degree)
    else:
        coef = _fit_lsq(f_unit, interval, degree, weights, weight_floor)
    poly = ChebPoly(coef, interval, method=method, target=target.name)
    poly.max_error = certify(poly, target, interval, extra)
    return poly


def fit_to_tolerance(
    fn: Any,
    interval: Sequence[float],
    tol: float,
    method: str = "minimax",
    *,
    max_degree: int = 127,
    weights: Weights = None,
) -> Polynomial:
    """The lowest-degree fit with ``max_error <= tol`` on ``interval``.

    For ``method="composite"`` (sign, relu, abs) the precision ``alpha`` is raised until the
    certified error meets ``tol``. Raises with the best achievable error if ``max_degree`` does
    not suffice.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    interval = check_interval(interval)
    if method == "composite":
        bound = max(abs(v) for v in interval)
        alpha = max(1.0, float(np.floor(np.log2(bound / tol))))
        for _ in range(32):
            poly = fit(fn, interval, method="composite", alpha=alpha)
            if poly.max_error <= tol:
                return poly
            alpha += 1.0
        raise ValueError(f"no composite approximation reached tol={tol:g}")

    def attempt(degree: int) -> ChebPoly:
        return fit(fn, interval, degree, method, weights=weights)

    if method != "minimax":
        # Interpolation and least-squares errors are not monotone in the degree: scan upwards.
        for degree in range(max_degree + 1):
            poly = attempt(degree)
            if poly.max_error <= tol:
                return poly
        raise ValueError(
            f"degree {max_degree} reaches only max_error={poly.max_error:.3e} > tol={tol:g} "
            f"on {interval}; raise max_degree or narrow the interval"
        )
    # The minimax error never increases with the degree: bisect.
    fits = {max_degree: attempt(max_degree)}
    if fits[max_degree].max_error > tol:
        raise ValueError(
            f"degree {max_degree} reaches only max_error={fits[max_degree].max_error:.3e} > "
            f"tol={tol:g} on {interval}; raise max_degree, narrow the interval, or use "
            "method='composite' for relu"
        )
    low, high = 0, max_degree
    while low < high:
        mid = (low + high) // 2
        fits[mid] = attempt(mid)
        if fits[mid].max_error <= tol:
            high = mid
        else:
            low = mid + 1
    return fits[high]
