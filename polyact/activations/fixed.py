"""Activations without parameters that polyact defines itself (``x^2``, ``|x|``, ``sign``), and
the points where an activation module is not smooth (its kinks), which seed the Remez search.

A module states its kinks in a ``breakpoints`` attribute; torch's own piecewise activations are
listed here by type.
"""
from __future__ import annotations

import torch
from torch import nn


class Square(nn.Module):
    """``x ** 2``: the classic HE-friendly activation (already a polynomial)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Abs(nn.Module):
    """``|x|``, a fitting target (non-smooth at 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()

    breakpoints = (0.0,)


class Sign(nn.Module):
    """``sign(x)``, the target of composite approximations (discontinuous at 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    breakpoints = (0.0,)


TORCH_BREAKPOINTS: dict[type, tuple[float, ...]] = {
    nn.ReLU: (0.0,),
    nn.LeakyReLU: (0.0,),
    nn.ELU: (0.0,),
    nn.SELU: (0.0,),
    nn.Hardswish: (-3.0, 3.0),
    nn.Hardsigmoid: (-3.0, 3.0),
}


def activation_breakpoints(module: nn.Module) -> tuple[float, ...]:
    """Points where the activation is not smooth (kinks), used to seed the Remez search."""
    points = getattr(module, "breakpoints", None)
    if points is not None:
        return tuple(points)
    return TORCH_BREAKPOINTS.get(type(module), ())
