"""Max pooling as polynomials: ``max(a, b) = (a + b) / 2 + |a - b| / 2``, reduced over each
window as a balanced tree.

:class:`PolyMaxPool` gathers every window's elements into a last axis of length ``K`` (an
affine map: a fixed selection), then halves that axis ``ceil(log2 K)`` times. Level ``i``
computes all its differences ``d = a - b`` at once and applies one ``|x|`` module ``abs{i}``;
conversion fits each of them (composite ``|x|`` at precision ``2^-alpha`` on its calibrated
interval). Everything outside the ``abs`` modules is affine, so a PANN with polynomial max
pooling lowers to affine maps and polynomials and runs under CKKS: each level costs one affine
level plus the depth of its ``|x|``. Since max is 1-Lipschitz in each argument, the pooled
error is at most ``sum_i e_i / 2`` where ``e_i`` is level ``i``'s ``|x|`` error.

Padding and ``ceil_mode`` windows that reach outside the input repeat one of the window's own
elements instead of ``-inf`` (``max(a, a) = a`` and the odd ``|x|`` polynomials vanish at 0).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..activations.fixed import Abs


def _tuple(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def _positions(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> np.ndarray:
    """Input position of every (output, kernel offset) along one axis; -1 outside the input."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    pos = np.arange(out)[:, None] * stride - padding + np.arange(kernel)[None, :] * dilation
    return np.where((pos >= 0) & (pos < size), pos, -1)


def window_indices(spatial: Sequence[int], kernel, stride, padding, dilation, ceil_mode: bool) -> np.ndarray:
    """Flat input indices of each window, shape ``(*out_spatial, K)``; positions outside the
    input repeat the window's first element inside it."""
    dims = len(spatial)
    axes = [_positions(n, k, s, p, d, ceil_mode) for n, k, s, p, d in zip(
        spatial, _tuple(kernel, dims), _tuple(stride, dims), _tuple(padding, dims), _tuple(dilation, dims))]
    if dims == 1:
        flat = axes[0]
    else:  # 2-d: (Ho, kh) x (Wo, kw) -> (Ho, Wo, kh * kw)
        rows, cols = axes
        valid = (rows[:, None, :, None] >= 0) & (cols[None, :, None, :] >= 0)
        flat = np.where(valid, rows[:, None, :, None] * spatial[1] + cols[None, :, None, :], -1)
        flat = flat.reshape(rows.shape[0], cols.shape[0], -1)
    first = np.take_along_axis(flat, np.argmax(flat >= 0, axis=-1)[..., None], axis=-1)
    return np.where(flat >= 0, flat, first)


class WindowGather(nn.Module):
    """``(N, C, *spatial) -> (N, C, *out_spatial, K)``: each pooling window's elements on the
    last axis (a fixed selection, hence affine; kept whole when traced)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False, dims: int = 2) -> None:
        super().__init__()
        self.dims = dims
        self.kernel_size = _tuple(kernel_size, dims)
        self.stride = _tuple(stride if stride not in (None, [], ()) else kernel_size, dims)
        self.padding, self.dilation = _tuple(padding, dims), _tuple(dilation, dims)
        self.ceil_mode = bool(ceil_mode)
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def window(self) -> int:
        return math.prod(self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.dims:
            raise ValueError(f"max pooling over {self.dims} spatial axes got an input of shape {tuple(x.shape)}")
        if spatial not in self._cache:
            self._cache[spatial] = torch.from_numpy(window_indices(
                spatial, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode))
        index = self._cache[spatial]
        return x.flatten(2)[:, :, index]


class PolyMaxPool(nn.Module):
    """Max pooling by a tree of ``max(a, b) = (a + b) / 2 + |a - b| / 2`` (see the module
    docstring). With exact ``|x|`` modules it equals ``nn.MaxPool{1,2}d``; conversion replaces
    them by polynomials."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False, dims: int = 2) -> None:
        super().__init__()
        self.gather = WindowGather(kernel_size, stride, padding, dilation, ceil_mode, dims)
        self.levels = max(1, math.ceil(math.log2(self.gather.window))) if self.gather.window > 1 else 0
        for i in range(self.levels):
            self.add_module(f"abs{i}", Abs())

    @classmethod
    def like(cls, pool: nn.Module) -> "PolyMaxPool":
        """The polynomial version of an ``nn.MaxPool1d`` / ``nn.MaxPool2d``."""
        dims = 1 if isinstance(pool, nn.MaxPool1d) else 2
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.gather(x)
        count = self.gather.window
        for i in range(self.levels):
            pairs = count // 2
            a, b = values[..., 0 : 2 * pairs : 2], values[..., 1 : 2 * pairs : 2]
            larger = (a + b) * 0.5 + getattr(self, f"abs{i}")(a - b) * 0.5
            values = torch.cat([larger, values[..., 2 * pairs : count]], dim=-1) if count % 2 else larger
            count = pairs + count % 2
        return values[..., 0]

    def extra_repr(self) -> str:
        g = self.gather
        return f"kernel_size={g.kernel_size}, stride={g.stride}, padding={g.padding}, window={g.window}, levels={self.levels}"
