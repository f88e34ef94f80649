"""Where each element of a tensor lives in the slots.

A *layout* maps element ``e`` of a flattened ``(C, *spatial)`` tensor to slot ``positions[e]``;
a tensor whose footprint ``max(positions) + 1`` exceeds one ciphertext's block spans several
ciphertexts (slot ``p`` is slot ``p mod block`` of ciphertext ``p // block``).

* *flat*: ``positions = arange(size)`` (row-major ``C, H, W``), what the client packs.
* *gap* ``s`` on a base grid ``(H0, W0)`` (multiplexed packing): after a stride-``s`` layer,
  values keep their place in the input grid and ``s^2`` channels share one grid, interleaved:

      pos(c, y, x) = (c // s^2) H0 W0 + (s y + a) W0 + (s x + b),   (a, b) = divmod(c mod s^2, s).

  A stride-2 convolution from a flat ``C, 2H, 2W`` tensor into this layout has diagonals
  ``pos_in - pos_out`` that do not depend on ``(y, x)``: a few hundred instead of tens of
  thousands in the flat layout (the diagonals of a strided map in a flat layout depend on the
  output position).

:func:`choose_layout` picks, for each affine map, the candidate with the fewest distinct
diagonals (measured on the map's non-zeros).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Layout:
    """Slot ``positions`` of a tensor of ``shape``; ``gap`` and ``base`` (spatial grid) describe
    a gap layout (``gap`` 1 and ``base`` the tensor's own grid for a flat one)."""

    shape: tuple[int, ...]
    positions: np.ndarray
    gap: int = 1
    base: tuple[int, ...] = ()

    @property
    def footprint(self) -> int:
        return int(self.positions.max()) + 1 if self.positions.size else 0

    @classmethod
    def flat(cls, shape: tuple[int, ...]) -> "Layout":
        size = int(np.prod(shape, dtype=np.int64))
        return cls(tuple(shape), np.arange(size, dtype=np.int64), 1, tuple(shape[1:]))

    @classmethod
    def gapped(cls, shape: tuple[int, ...], gap: int, base: tuple[int, ...]) -> "Layout":
        """Gap layout of ``shape = (C, *spatial)`` on ``base`` (``gap * spatial <= base``)."""
        channels, *spatial = shape
        dims = len(spatial)
        grid = np.indices((channels, *spatial)).reshape(dims + 1, -1)
        c = grid[0]
        group, sub = c // gap**dims, c % gap**dims
        pos = group * int(np.prod(base, dtype=np.int64))
        stride = 1
        for axis in range(dims - 1, -1, -1):  # last axis fastest; digit of ``sub`` per axis
            digit = (sub // gap ** (dims - 1 - axis)) % gap
            pos = pos + (gap * grid[axis + 1] + digit) * stride
            stride *= base[axis]
        return cls(tuple(shape), pos.astype(np.int64), gap, tuple(base))


def count_diagonals(weight: sp.spmatrix, pos_in: np.ndarray, pos_out: np.ndarray) -> int:
    """Distinct ``pos_in[col] - pos_out[row]`` over the non-zeros of ``weight``: the number of
    generalised diagonals of the map in these layouts (all in one block)."""
    coo = weight.tocoo()
    if coo.nnz == 0:
        return 0
    offsets = pos_in[coo.col] - pos_out[coo.row]
    low = offsets.min()
    seen = np.zeros(int(offsets.max() - low) + 1, dtype=bool)
    seen[offsets - low] = True
    return int(seen.sum())


def _candidates(shape: tuple[int, ...], sources: list[Layout]) -> list[Layout]:
    size = int(np.prod(shape, dtype=np.int64))
    out = [Layout.flat(shape)]
    for src in sources:
        if src.shape == tuple(shape):
            out.append(src)
        elif src.positions.size == size and len(shape) != len(src.shape):
            out.append(Layout(tuple(shape), src.positions))  # a pure reshape keeps the slots
        spatial = shape[1:]
        if len(shape) >= 2 and len(src.base) == len(spatial) and all(b % n == 0 for b, n in zip(src.base, spatial)):
            ratios = {b // n for b, n in zip(src.base, spatial)}
            if len(ratios) == 1 and (gap := ratios.pop()) > 1:
                out.append(Layout.gapped(tuple(shape), gap, src.base))
    return out


def choose_layout(shape: tuple[int, ...], weights: list[sp.spmatrix], sources: list[Layout]) -> tuple[Layout, dict]:
    """The layout of an affine map's output with the fewest diagonals over all its sources
    (ties: the smaller footprint, then the first candidate), and the counts measured."""
    best, measured = None, {}
    for candidate in _candidates(shape, sources):
        count = sum(count_diagonals(w, s.positions, candidate.positions) for w, s in zip(weights, sources))
        measured[f"gap {candidate.gap}" if candidate.base else "reshape"] = count
        key = (count, candidate.footprint)
        if best is None or key < best[0]:
            best = (key, candidate)
    return best[1], measured


def row_aligned_input(weight: sp.csr_matrix, pos_out: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """A replicated input layout that the client packs for a map ``y = W x`` read straight
    from the input: with ``Q`` the most non-zeros of a row and ``M`` the power of two above the
    output footprint, slot ``q M + pos_out[r]`` holds ``x[c_q(r)]``, the ``q``-th input of row
    ``r``. Then ``y[r] = sum_q W[r, c_q(r)] * slot[q M + pos_out[r]]``: ``Q`` diagonals (offsets
    ``q M``) instead of up to ``2 n - 1``, for ``Q M`` slots. Returns ``gather`` (per slot, the
    input element it holds, ``-1`` for none) and the map ``W'`` on those slots
    (``W' gather(x) = W x``)."""
    weight = sp.csr_matrix(weight)
    weight.sort_indices()
    counts = np.diff(weight.indptr)
    width = 1 << max(0, (int(pos_out.max()) + 1 - 1).bit_length()) if pos_out.size else 1
    rows = np.repeat(np.arange(weight.shape[0]), counts)
    q = np.arange(weight.nnz) - np.repeat(weight.indptr[:-1], counts)  # rank of each entry in its row
    slots = q * width + pos_out[rows]
    gather = np.full(int(counts.max(initial=0)) * width, -1, dtype=np.int64)
    gather[slots] = weight.indices
    return gather, sp.csr_matrix((weight.data, (rows, slots)), shape=(weight.shape[0], gather.size))
