"""Generalised diagonals of a sparse affine map between slot layouts, tile by tile.

With input slots ``pos_in`` and output slots ``pos_out`` and blocks of ``P`` slots, entry
``W[r, c]`` lands in tile ``(i, j) = (pos_out[r] // P, pos_in[c] // P)`` (output ciphertext
``i``, input ciphertext ``j``) on diagonal ``k = pos_in[c] mod P - pos_out[r] mod P`` in
``(-P, P)`` at row ``pos_out[r] mod P``: ``y_i = sum_j sum_k d_{ijk} * rot(x_j, k)``. Nothing is
ever dense beyond one ``(diagonals, P)`` table per tile.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

TileOffsets = dict[tuple[int, int], np.ndarray]  # (output ct, input ct) -> sorted diagonal offsets


def _keys(weight: sp.spmatrix, pos_in: np.ndarray, pos_out: np.ndarray, block: int):
    coo = weight.tocoo()
    out, inp = pos_out[coo.row], pos_in[coo.col]
    i, j = out // block, inp // block
    k = inp % block - out % block
    return i, j, k, out % block, coo.data


def tile_offsets(weight: sp.spmatrix, pos_in: np.ndarray, pos_out: np.ndarray, block: int) -> TileOffsets:
    """Per tile, the offsets of its non-zero diagonals."""
    i, j, k, _, _ = _keys(weight, pos_in, pos_out, block)
    tiles: TileOffsets = {}
    if i.size == 0:
        return tiles
    width = int(j.max()) + 1
    key = (i * width + j) * (2 * block) + (k + block)
    seen = np.zeros(int(key.max()) + 1, dtype=bool)  # distinct keys by marking, not sorting: O(nnz)
    seen[key] = True
    key = np.flatnonzero(seen)
    ti, rest = np.divmod(key, width * 2 * block)
    tj, tk = np.divmod(rest, 2 * block)
    for a, b in sorted(set(zip(ti.tolist(), tj.tolist()))):
        tiles[(a, b)] = (tk[(ti == a) & (tj == b)] - block).astype(np.int64)
    return tiles


def tile_diagonals(weight: sp.spmatrix, pos_in: np.ndarray, pos_out: np.ndarray, block: int) -> dict[tuple[int, int], tuple[np.ndarray, sp.csr_matrix]]:
    """Per tile, its offsets and a sparse ``(len(offsets), block)`` table whose row ``n`` is the
    diagonal ``d_k`` (``k = offsets[n]``): ``d_k[p] = W[r, c]`` with ``pos_out[r] mod P = p``.
    Memory is that of the non-zeros (a dense map's diagonals are mostly zero)."""
    i, j, k, row, data = _keys(weight, pos_in, pos_out, block)
    out = {}
    for tile, offsets in tile_offsets(weight, pos_in, pos_out, block).items():
        mask = (i == tile[0]) & (j == tile[1])
        table = sp.csr_matrix((data[mask], (np.searchsorted(offsets, k[mask]), row[mask])), shape=(offsets.size, block))
        out[tile] = (offsets, table)  # (k, row) is unique per entry: nothing is summed
    return out
