"""Sparse matrices of the affine layers of a network, built from their structure.

Every map here acts on a tensor flattened in row-major order (no batch axis) and returns a
``scipy.sparse.csr_matrix`` ``M`` of shape ``(output size, input size)``. Memory and time grow
with the number of non-zero entries (for a convolution: outputs x input channels per group x
kernel size), never with ``size^2``:

* :func:`conv_matrix`: ``y[o, p] = sum_{c, k} w[o, c, k] x[g(o) C_g + c, p s - pad + k d]``
  (stride ``s``, padding, dilation ``d``, groups; any number of spatial axes).
* :func:`channel_scale`: ``y[c, p] = a[c] x[c, p]`` (batch normalisation in eval mode).
* :func:`last_axis_linear`: ``y[..., :] = W x[..., :]`` (``nn.Linear`` on any leading axes).
* :func:`probe_channelwise`: an operation that acts identically on every channel (pooling),
  probed on one channel with torch itself and repeated per channel (``I_C (x) M_1``).
* :func:`probe_gather`: an operation that only moves or copies values (reshape, permute,
  slicing, padding, concatenation), found by feeding it element indices.
* :func:`probe_dense`: the fallback for small unusual operations: basis vectors, one at a
  time, limited to :data:`DENSE_PROBE_LIMIT` entries.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

DENSE_PROBE_LIMIT = 1 << 22  # entries of a densely probed matrix (32 MiB in float64)
DENSE_PROBE_INPUTS = 1 << 13  # basis vectors one dense probe may evaluate


class NotStructured(ValueError):
    """A probe found that the operation is not of the kind it extracts."""


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def conv_matrix(
    weight: np.ndarray,
    in_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> tuple[sp.csr_matrix, tuple[int, ...]]:
    """Matrix of a zero-padded convolution (no bias) and its output shape ``(C_out, *spatial)``."""
    weight = np.asarray(weight, dtype=np.float64)
    c_out, c_group, *kernel = weight.shape
    c_in, *spatial = (int(v) for v in in_shape)
    if c_in != c_group * groups or c_out % groups:
        raise ValueError(f"a convolution with {c_in} input channels, groups={groups} cannot have weight shape {weight.shape}")
    out_spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(spatial, padding, dilation, kernel, stride)]
    if min(out_spatial) < 1:
        raise ValueError(f"the convolution's output would be empty for input shape {tuple(in_shape)}")
    out_positions = _size(out_spatial)
    in_positions = _size(spatial)
    out_grid = np.indices(out_spatial).reshape(len(spatial), -1)  # (dims, P_out)
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    in_flat = np.zeros((len(offsets), out_positions), dtype=np.int64)  # input position per (offset, output)
    valid = np.zeros((len(offsets), out_positions), dtype=bool)
    for i, offset in enumerate(offsets):
        coords = [out_grid[a] * stride[a] - padding[a] + offset[a] * dilation[a] for a in range(len(spatial))]
        valid[i] = np.logical_and.reduce([(c >= 0) & (c < n) for c, n in zip(coords, spatial)])
        in_flat[i] = np.ravel_multi_index([np.clip(c, 0, n - 1) for c, n in zip(coords, spatial)], spatial)
    # entries ordered by output row (channel o, position p), then by (offset, channel in group):
    # CSR directly, without sorting
    w = weight.reshape(c_out, c_group, -1).transpose(0, 2, 1)  # (C_out, K, C_g)
    first = (np.arange(c_out) // (c_out // groups)) * c_group  # first input channel of each output's group
    cols = (first[:, None, None, None] + np.arange(c_group)[None, None, None, :]) * in_positions \
        + in_flat.T[None, :, :, None]  # (C_out, P_out, K, C_g)
    vals = np.broadcast_to(w[:, None, :, :], cols.shape)
    keep = valid.T[None, :, :, None] & (vals != 0)
    counts = keep.reshape(c_out * out_positions, -1).sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    matrix = sp.csr_matrix((vals[keep], cols[keep], indptr), shape=(c_out * out_positions, c_in * in_positions))
    return matrix, (c_out, *out_spatial)


def channel_scale(scale: np.ndarray, shape: Sequence[int]) -> sp.csr_matrix:
    """Diagonal matrix multiplying channel ``c`` (axis 0 of ``shape``) by ``scale[c]``."""
    inner = _size(shape[1:])
    return sp.diags(np.repeat(np.asarray(scale, dtype=np.float64), inner), format="dia")


def last_axis_linear(weight: np.ndarray, in_shape: Sequence[int]) -> sp.csr_matrix:
    """``I_lead (x) W``: ``weight`` of shape ``(out, in)`` applied along the last axis."""
    lead = _size(in_shape[:-1])
    w = sp.csr_matrix(np.asarray(weight, dtype=np.float64))
    return w if lead == 1 else sp.kron(sp.identity(lead, format="csr"), w, format="csr")


def _columns(apply: Callable[[torch.Tensor], torch.Tensor], size: int, shape: Sequence[int], chunk: int) -> sp.csr_matrix:
    blocks = []
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        basis = torch.zeros((stop - start, size), dtype=torch.float64)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        blocks.append(sp.csr_matrix(apply(basis.reshape(stop - start, *shape)).reshape(stop - start, -1).numpy()))
    return sp.vstack(blocks).T.tocsr()


def probe_channelwise(op: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int], chunk: int = 1024) -> tuple[sp.csr_matrix, tuple[int, ...]]:
    """Matrix of ``op`` (acting on a batch ``(N, C, *spatial)`` channel by channel, the same
    way on each) from one channel probed with basis images, repeated over the channels."""
    channels, *spatial = in_shape
    with torch.no_grad():
        out_spatial = tuple(op(torch.zeros((1, 1, *spatial), dtype=torch.float64)).shape[2:])
        one = _columns(op, _size(spatial), (1, *spatial), chunk)
    matrix = one if channels == 1 else sp.kron(sp.identity(channels, format="csr"), one, format="csr")
    return matrix, (channels, *out_spatial)


def probe_gather(call: Callable[[list[torch.Tensor]], list[torch.Tensor]], shapes: list[tuple[int, ...]]) -> tuple[list[list[sp.csr_matrix]], list[np.ndarray]]:
    """Selection matrices of an operation that copies input elements (or constants) to its
    outputs. ``call`` maps one batch-1 tensor per input to the list of output tensors.

    Returns, per output, one 0/1 matrix per input and the constant part (the output at zero
    inputs). Raises :class:`NotStructured` when some output is not a copy of one input element
    (checked on random inputs)."""
    sizes = [_size(s) for s in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    with torch.no_grad():
        zero = call([torch.zeros((1, *s), dtype=torch.float64) for s in shapes])
        index = call([torch.arange(o + 1, o + n + 1, dtype=torch.float64).reshape(1, *s)
                      for o, n, s in zip(offsets, sizes, shapes)])
    matrices, constants = [], []
    for out, base in zip(index, zero):
        v = (out - base).reshape(-1).numpy()
        r = np.rint(v)
        if np.abs(v - r).max(initial=0.0) > 0 or r.min(initial=0) < 0 or r.max(initial=0) > offsets[-1]:
            raise NotStructured("not a copy of input elements")
        per_input = []
        for o, n in zip(offsets, sizes):
            rows = np.flatnonzero((r > o) & (r <= o + n))
            per_input.append(sp.csr_matrix((np.ones(rows.size), (rows, r[rows].astype(np.int64) - o - 1)), shape=(v.size, n)))
        matrices.append(per_input)
        constants.append(base.reshape(-1).numpy().astype(np.float64))
    _check(call, shapes, matrices, constants)
    return matrices, constants


def probe_dense(call: Callable[[list[torch.Tensor]], list[torch.Tensor]], shapes: list[tuple[int, ...]], what: str) -> tuple[list[list[sp.csr_matrix]], list[np.ndarray]]:
    """The fallback for small unusual operations: columns from basis vectors (batch 1, one at a
    time); refuses more than :data:`DENSE_PROBE_LIMIT` entries or :data:`DENSE_PROBE_INPUTS`
    inputs with a :class:`ValueError` naming the operation. Same results as :func:`probe_gather`;
    raises :class:`NotStructured` when the operation is not affine."""
    sizes = [_size(s) for s in shapes]
    with torch.no_grad():
        zero = call([torch.zeros((1, *s), dtype=torch.float64) for s in shapes])
        outputs = sum(int(z.numel()) for z in zero)
        if sum(sizes) * outputs > DENSE_PROBE_LIMIT or sum(sizes) > DENSE_PROBE_INPUTS:
            raise ValueError(
                f"{what} has no structured lowering, and probing it densely would need a {outputs} x {sum(sizes)} "
                f"matrix (limit {DENSE_PROBE_LIMIT} entries, {DENSE_PROBE_INPUTS} inputs); express it with "
                "supported layers (Conv1d/Conv2d, Linear, BatchNorm, average pooling, reshapes, adds, scalar factors)"
            )
        columns: list[list[list[np.ndarray]]] = [[[] for _ in shapes] for _ in zero]
        for i, (shape, n) in enumerate(zip(shapes, sizes)):
            for j in range(n):
                inputs = [torch.zeros((1, *s), dtype=torch.float64) for s in shapes]
                inputs[i].view(-1)[j] = 1.0
                for k, (out, base) in enumerate(zip(call(inputs), zero)):
                    columns[k][i].append((out - base).reshape(-1).numpy())
    matrices = [[sp.csr_matrix(np.array(cols).T) if cols else sp.csr_matrix((z.numel(), n))
                 for cols, n in zip(per_output, sizes)] for per_output, z in zip(columns, zero)]
    constants = [z.reshape(-1).numpy().astype(np.float64) for z in zero]
    _check(call, shapes, matrices, constants)
    return matrices, constants


def _check(call, shapes, matrices, constants) -> None:
    """``call`` on random inputs equals the extracted affine maps (else :class:`NotStructured`)."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        inputs = [torch.randn((1, *s), dtype=torch.float64, generator=generator) for s in shapes]
        with torch.no_grad():
            direct = call(inputs)
        for out, per_input, const in zip(direct, matrices, constants):
            linear = const + sum(m @ x.reshape(-1).numpy() for m, x in zip(per_input, inputs))
            got = out.reshape(-1).numpy()
            if np.abs(got - linear).max(initial=0.0) > 1e-9 * (1.0 + np.abs(got).max(initial=0.0)):
                raise NotStructured("not affine")
