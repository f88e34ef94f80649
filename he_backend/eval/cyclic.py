"""Affine maps on periodic slot vectors (one sample per ciphertext): diagonals modulo a
period, then a fold.

A value is *periodic* with period ``T`` (a power of two dividing the slot count ``S``) when
slot ``p + a T`` holds what slot ``p`` holds; every value is periodic with ``T = S``. Let the
input ``x`` have period ``T_x`` and element ``c`` at slot ``q_c < T_x``, and let the output
rows sit at slots ``p_r < M`` with ``M`` (a power of two) the output's period. Entry
``W[r, c]`` needs ``x`` at ``p + k = q_c (mod T_x)`` in some output slot ``p = p_r (mod M)``.
With ``delta = (q_c - p_r) mod T_x``,

    k = delta mod M,     p = p_r + delta - k   (< T = max(M, T_x)),

so every entry lies on one of at most ``min(M, T_x)`` diagonals ``d_k`` (vectors of ``T`` slots, tiled
over the ciphertext), and ``z = sum_k d_k * rot(x, k)`` holds row ``r``'s terms in slots
``p_r + a M``, ``0 <= a < T / M``. The fold

    y = z + rot(z, M),  y <- y + rot(y, 2M),  ...,  y <- y + rot(y, T / 2)

sums them: ``log2(T / M)`` rotations, and ``y`` has period ``M`` with row ``r`` in every slot
``p_r + a M``; every other slot is zero. Nothing but the map's own outputs lands anywhere, so the
result can be decrypted or passed to a polynomial as it is.

The choice of ``M`` trades diagonals for fold rotations: a dense ``m x n`` map read from a
period-``n`` input has ``n`` diagonals with ``M = n`` and ``M' = 2^ceil(log2 m)`` diagonals and
``log2(n / M')`` fold rotations with ``M'`` (the "hybrid" diagonal method); a map read from a
row-aligned replicated input (:func:`he_backend.lowering.layout.row_aligned_input`) is one product and
a fold.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp


def _entries(weight: sp.spmatrix, pos_in: np.ndarray, pos_out: np.ndarray, in_period: int,
             period: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-zero: its output slot ``p``, diagonal ``k`` and value (module docstring)."""
    coo = weight.tocoo()
    p_r, q_c = pos_out[coo.row], pos_in[coo.col]
    if coo.nnz and (p_r.max() >= period or q_c.max() >= in_period):
        raise ValueError(f"slots beyond the periods: outputs up to {p_r.max()} (period {period}), "
                         f"inputs up to {q_c.max()} (period {in_period})")
    delta = (q_c - p_r) % in_period
    k = delta % period  # delta < in_period: at most min(period, in_period) diagonals
    return p_r + delta - k, k, coo.data


def cyclic_offsets(weight: sp.spmatrix, pos_in: np.ndarray, pos_out: np.ndarray, in_period: int,
                   period: int) -> np.ndarray:
    """The sorted distinct diagonals ``k`` of the map (module docstring)."""
    return np.unique(_entries(weight, pos_in, pos_out, in_period, period)[1]).astype(np.int64)


def cyclic_diagonals(weight: sp.spmatrix, pos_in: np.ndarray, pos_out: np.ndarray, in_period: int,
                     period: int, width: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """Offsets and a sparse ``(len(offsets), width)`` table whose row ``n`` is ``d_k``
    (``k = offsets[n]``) over one period ``width = T`` of the fold."""
    p, k, data = _entries(weight, pos_in, pos_out, in_period, period)
    offsets = np.unique(k).astype(np.int64)
    return offsets, sp.csr_matrix((data, (np.searchsorted(offsets, k), p)), shape=(offsets.size, width))


def fold_width(period: int, in_periods: Sequence[int]) -> int:
    """``T``: the length of the diagonals and of the fold, ``max(M, T_x)`` over the sources."""
    return max([period, *in_periods])


def fold_steps(period: int, width: int) -> tuple[int, ...]:
    """The fold's rotations ``M, 2M, ..., T/2``."""
    steps, step = [], period
    while step < width:
        steps.append(step)
        step *= 2
    return tuple(steps)


def periodic(values: np.ndarray, slots: int) -> np.ndarray:
    """A vector of one period (a power of two dividing ``slots``) repeated over the slots."""
    if slots % values.size:
        raise ValueError(f"a period of {values.size} does not divide {slots} slots")
    return np.tile(values, slots // values.size)
