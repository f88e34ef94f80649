"""Observers that record the inputs of each activation during calibration, and the choice of
fitting interval from what they saw.

An :class:`RangeObserver` keeps the exact minimum, maximum and count, per-channel extremes, and
a uniform reservoir sample of the values (for percentiles, histograms and the calibration
error of a fit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class RangeObserver(nn.Module):
    """Pass-through module recording statistics of the tensors it sees.

    ``channel_axis`` is the axis of per-channel ranges (1 for ``(N, C, ...)`` and ``(N, F)``).
    """

    def __init__(self, sample_size: int = 50_000, channel_axis: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.sample_size = sample_size
        self.channel_axis = channel_axis
        self.generator = torch.Generator().manual_seed(seed)
        self.count = 0
        self.min = float("inf")
        self.max = float("-inf")
        self.channel_min: torch.Tensor | None = None
        self.channel_max: torch.Tensor | None = None
        self.samples = torch.empty(0, dtype=torch.float64)
        self.sample_channels = torch.empty(0, dtype=torch.int64)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.detach().to(torch.float64, copy=True)  # inplace activations overwrite x afterwards
        if values.numel() == 0:
            return x
        if not torch.isfinite(values).all():
            raise ValueError("calibration data produced non-finite activation inputs; check the model and data")
        self.min = min(self.min, values.min().item())
        self.max = max(self.max, values.max().item())
        if values.dim() > self.channel_axis:
            per_channel = values.movedim(self.channel_axis, 0).reshape(values.shape[self.channel_axis], -1)
            lo, hi = per_channel.min(1).values, per_channel.max(1).values
            if self.channel_min is None:
                self.channel_min, self.channel_max = lo, hi
            else:
                self.channel_min = torch.minimum(self.channel_min, lo)
                self.channel_max = torch.maximum(self.channel_max, hi)
        self._reservoir(values.reshape(-1), self._channel_index(values))
        return x

    def _channel_index(self, values: torch.Tensor) -> torch.Tensor:
        """Channel of every element of ``values`` in flattened order (0 without a channel axis)."""
        if values.dim() <= self.channel_axis:
            return torch.zeros(values.numel(), dtype=torch.int64)
        shape = [1] * values.dim()
        shape[self.channel_axis] = values.shape[self.channel_axis]
        index = torch.arange(values.shape[self.channel_axis]).reshape(shape)
        return index.expand(values.shape).reshape(-1)

    def _reservoir(self, flat: torch.Tensor, channels: torch.Tensor) -> None:
        """Algorithm R, vectorised: element ``count + j`` replaces a random slot with
        probability ``sample_size / (count + j + 1)``."""
        room = max(self.sample_size - self.samples.numel(), 0)
        if room > 0:
            self.samples = torch.cat([self.samples, flat[:room]])
            self.sample_channels = torch.cat([self.sample_channels, channels[:room]])
        rest, rest_channels = flat[room:], channels[room:]
        if rest.numel():
            seen = self.count + room + torch.arange(1, rest.numel() + 1, dtype=torch.float64)
            slots = (torch.rand(rest.numel(), generator=self.generator, dtype=torch.float64) * seen).long()
            keep = slots < self.sample_size
            self.samples[slots[keep]] = rest[keep]
            self.sample_channels[slots[keep]] = rest_channels[keep]
        self.count += flat.numel()

    def stats(self) -> "ActivationStats":
        if self.count == 0:
            raise RuntimeError("this activation saw no calibration data; is it reachable from the model's forward?")
        return ActivationStats(
            count=self.count,
            min=self.min,
            max=self.max,
            samples=self.samples.numpy().copy(),
            sample_channels=self.sample_channels.numpy().copy(),
            channel_min=None if self.channel_min is None else self.channel_min.numpy(),
            channel_max=None if self.channel_max is None else self.channel_max.numpy(),
        )


@dataclass
class ActivationStats:
    """What an observer saw: exact extremes and count, and a uniform sample of the values."""

    count: int
    min: float
    max: float
    samples: np.ndarray
    sample_channels: np.ndarray
    channel_min: np.ndarray | None = None
    channel_max: np.ndarray | None = None

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples, q))

    def histogram(self, interval: tuple[float, float], bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of the sampled values on ``interval``."""
        return np.histogram(self.samples, bins=bins, range=interval)

    def outside(self, interval: tuple[float, float]) -> float:
        """Fraction of the sampled values outside ``interval``."""
        a, b = interval
        return float(np.mean((self.samples < a) | (self.samples > b)))


def choose_interval(
    low: float, high: float, margin: float = 0.1, symmetric: bool = False
) -> tuple[float, float]:
    """Fitting interval around observed values in ``[low, high]``: the half-width grows by the
    factor ``1 + margin`` about the centre (``symmetric``: ``[-B, B]`` with
    ``B = (1 + margin) max(|low|, |high|)``). A degenerate range becomes ``centre +- 1``."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if symmetric:
        bound = (1.0 + margin) * max(abs(low), abs(high))
        return (-bound, bound) if bound > 1e-6 else (-1.0, 1.0)
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    if half < 1e-6:
        return centre - 1.0, centre + 1.0
    half *= 1.0 + margin
    return centre - half, centre + half


def observed_range(stats: ActivationStats, range_mode: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
    """The range to cover: exact ``minmax`` or the ``percentile`` band of the samples."""
    if range_mode == "minmax":
        return stats.min, stats.max
    if range_mode == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        return stats.percentile(100.0 - percentile), stats.percentile(percentile)
    raise ValueError(f"range_mode must be 'minmax' or 'percentile', got {range_mode!r}")
