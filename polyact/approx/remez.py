"""The Remez exchange algorithm for best uniform (minimax) approximation.

For a basis ``phi_0 .. phi_{m-1}`` (a Haar system on ``[lo, hi]``) and a continuous ``f``, the
best approximation ``p* = sum c_j phi_j`` is characterised by equioscillation: the error
``e = f - p*`` attains ``max |e|`` with alternating signs at ``m + 1`` points. Each iteration
solves the levelled system

    sum_j c_j phi_j(t_i) + (-1)^i E = f(t_i),   i = 0 .. m,

on the current reference ``t_0 < ... < t_m``, then moves the reference to the local extrema of
the new error (multi-point exchange). ``|E| <= E* <= max |e|`` (de la Vallee Poussin), so the
loop stops when ``max |e| <= (1 + tol) |E|``, which bounds the distance to the true minimax
error. Extrema are found on a dense grid (Chebyshev + uniform points, refined around known
kinks) and polished by golden-section search, which also handles non-smooth targets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from numpy.polynomial import chebyshev as npcheb

Basis = Callable[[np.ndarray, int], np.ndarray]

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def full_basis(t: np.ndarray, m: int) -> np.ndarray:
    """Columns ``T_0(t) .. T_{m-1}(t)``."""
    return npcheb.chebvander(t, m - 1)


def odd_basis(t: np.ndarray, m: int) -> np.ndarray:
    """Columns ``T_1(t), T_3(t), .., T_{2m-1}(t)`` (odd polynomials; Haar on (0, 1])."""
    return npcheb.chebvander(t, 2 * m - 1)[:, 1::2]


@dataclass
class RemezResult:
    """Outcome of :func:`remez`: basis coefficients, the levelled error ``|E|`` (a lower bound
    of the minimax error), the certified ``max_error`` (an upper bound), the final reference and
    the signed errors there."""

    coef: np.ndarray
    levelled_error: float
    max_error: float
    reference: np.ndarray
    reference_errors: np.ndarray
    iterations: int
    converged: bool


def search_grid(lo: float, hi: float, m: int, breakpoints: Sequence[float] = ()) -> np.ndarray:
    """Dense grid on ``[lo, hi]``: Chebyshev points (fine near the ends), uniform points, and
    geometric clusters around each breakpoint (where errors of non-smooth targets oscillate)."""
    k = max(1000, 16 * m)
    unit = np.cos(np.pi * np.arange(k + 1) / k)
    parts = [lo + (hi - lo) * (unit + 1.0) / 2.0, np.linspace(lo, hi, k + 1)]
    offsets = (hi - lo) * np.logspace(-12, -1, 80)
    for bp in breakpoints:
        if lo <= bp <= hi:
            parts.append(np.concatenate([[bp], bp - offsets, bp + offsets]))
    grid = np.unique(np.clip(np.concatenate(parts), lo, hi))
    return grid


def _local_maxima(e: np.ndarray) -> np.ndarray:
    """Indices where ``|e|`` is a local maximum (endpoints included)."""
    a = np.abs(e)
    inner = np.flatnonzero((a[1:-1] >= a[:-2]) & (a[1:-1] >= a[2:])) + 1
    return np.unique(np.concatenate([[0, a.size - 1], inner]))


def _polish(
    error: Callable[[np.ndarray], np.ndarray],
    grid: np.ndarray,
    idx: np.ndarray,
    e_grid: np.ndarray,
    iterations: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Golden-section search of ``sign * error`` on ``[grid[i-1], grid[i+1]]`` for every index,
    vectorised; returns the best point per bracket and its signed error."""
    sign = np.sign(e_grid[idx])
    sign[sign == 0] = 1.0
    a = grid[np.maximum(idx - 1, 0)]
    b = grid[np.minimum(idx + 1, grid.size - 1)]
    x1 = b - _GOLDEN * (b - a)
    x2 = a + _GOLDEN * (b - a)
    f1 = sign * error(x1)
    f2 = sign * error(x2)
    for _ in range(iterations):
        left = f1 >= f2
        b = np.where(left, x2, b)
        a = np.where(left, a, x1)
        x_new = np.where(left, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
        f_new = sign * error(x_new)
        x1, f1, x2, f2 = (
            np.where(left, x_new, x2),
            np.where(left, f_new, f2),
            np.where(left, x1, x_new),
            np.where(left, f1, f_new),
        )
    candidates_x = np.stack([grid[idx], x1, x2])
    candidates_f = np.stack([sign * e_grid[idx], f1, f2])
    best = np.argmax(candidates_f, axis=0)
    cols = np.arange(idx.size)
    return candidates_x[best, cols], sign * candidates_f[best, cols]


def exchange(t: np.ndarray, e: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``size`` points of alternating error sign with the largest ``|e|``.

    Runs of equal sign keep their largest member; then the smallest errors are dropped
    (an end point alone, or an interior point with its smaller neighbour) until ``size`` remain.
    """
    order = np.argsort(t, kind="stable")
    t, e = t[order], e[order]
    keep_t: list[float] = []
    keep_e: list[float] = []
    for ti, ei in zip(t, e):
        if keep_t and (np.sign(ei) == np.sign(keep_e[-1]) or ti - keep_t[-1] <= 1e-15):
            if abs(ei) > abs(keep_e[-1]):
                keep_t[-1], keep_e[-1] = ti, ei
        else:
            keep_t.append(ti)
            keep_e.append(ei)
    while len(keep_t) > size:
        mags = np.abs(keep_e)
        if len(keep_t) == size + 1:
            drop = [0] if mags[0] < mags[-1] else [len(keep_t) - 1]
        else:
            i = int(np.argmin(mags))
            if i in (0, len(keep_t) - 1):
                drop = [i]
            else:
                drop = [i, i - 1 if mags[i - 1] < mags[i + 1] else i + 1]
        for j in sorted(drop, reverse=True):
            del keep_t[j], keep_e[j]
    return np.array(keep_t), np.array(keep_e)


def _initial_reference(grid: np.ndarray, e_grid: np.ndarray, size: int) -> np.ndarray:
    """Alternating extrema of the least-squares error ``e_grid``. Unlike the Chebyshev extrema,
    this start is never degenerate for odd or even targets (a symmetric reference forces the
    levelled error of an odd target to exactly zero)."""
    idx = _local_maxima(e_grid)
    ref, _ = exchange(grid[idx], e_grid[idx], size)
    if ref.size == size:
        return ref
    unit = np.cos(np.pi * np.arange(size) / (size - 1))[::-1]
    return grid[0] + (grid[-1] - grid[0]) * (unit + 1.0) / 2.0


def remez(
    f: Callable[[np.ndarray], np.ndarray],
    lo: float,
    hi: float,
    m: int,
    basis: Basis = full_basis,
    breakpoints: Sequence[float] = (),
    tol: float = 1e-6,
    max_iter: int = 80,
) -> RemezResult:
    """Best uniform approximation of ``f`` on ``[lo, hi]`` by ``m`` basis functions.

    ``f`` maps float64 arrays to arrays. Converges when ``max |e| <= (1 + tol) |E| + noise``,
    i.e. within a factor ``1 + tol`` of the true minimax error up to the float64 rounding noise
    ``noise = 50 eps m max|f|`` (which dominates only for errors near machine precision).
    """
    size = m + 1
    grid = search_grid(lo, hi, m, breakpoints)
    f_grid = f(grid)
    v_grid = basis(grid, m)
    noise_floor = 50.0 * np.finfo(float).eps * m * max(np.abs(f_grid).max(), 1e-300)
    lsq = np.linalg.lstsq(v_grid, f_grid, rcond=None)[0]
    e_lsq = f_grid - v_grid @ lsq
    if np.abs(e_lsq).max() <= noise_floor:  # f is (numerically) in the span: nothing to level
        worst = float(np.abs(e_lsq).max())
        return RemezResult(lsq, worst, worst, grid[[0, -1]], e_lsq[[0, -1]], 0, True)
    ref = _initial_reference(grid, e_lsq, size)
    signs = (-1.0) ** np.arange(size)
    best: RemezResult | None = None
    for it in range(1, max_iter + 1):
        f_ref = f(ref)
        system = np.column_stack([basis(ref, m), signs])
        solution = np.linalg.lstsq(system, f_ref, rcond=None)[0]
        coef, levelled = solution[:-1], solution[-1]
        e_grid = f_grid - v_grid @ coef

        def error(x: np.ndarray, coef: np.ndarray = coef) -> np.ndarray:
            return f(x) - basis(x, m) @ coef

        idx = _local_maxima(e_grid)
        t_peak, e_peak = _polish(error, grid, idx, e_grid)
        e_max = float(max(np.abs(e_peak).max(), np.abs(e_grid).max()))
        ref_errors = f_ref - system[:, :-1] @ coef
        current = RemezResult(coef, abs(float(levelled)), e_max, ref, ref_errors, it, False)
        if best is None or e_max < best.max_error:
            best = current
        if e_max <= abs(levelled) * (1.0 + tol) + noise_floor:
            current.converged = True
            return current
        new_ref, _ = exchange(np.concatenate([t_peak, ref]), np.concatenate([e_peak, ref_errors]), size)
        if new_ref.size < size:
            break
        ref = new_ref
    assert best is not None
    best.iterations = it
    return best
