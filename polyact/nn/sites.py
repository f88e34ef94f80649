"""Modules that hold one call site of an activation in a model being converted.

- :class:`FunctionActivation`: a functional call (``F.leaky_relu(x, 0.2)``) or a fused
  elementwise function of one tensor, as a module that can be observed and fitted;
- :class:`ActivationSlot`: the original activation with an observer on its input (calibration);
- :class:`CallSites`: one module called ``n`` times per forward, as ``n`` parts.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn


class FunctionActivation(nn.Module):
    """A functional activation call such as ``F.leaky_relu(x, 0.2)`` or ``x.clamp(min=0)``, or
    a fused elementwise function of one tensor (``fn`` a traced module), as a module, so that it
    can be observed, fitted and replaced like ``nn.GELU``. The constant arguments are kept: they
    are part of the function that gets fitted."""

    def __init__(self, fn: Callable, name: str, args: tuple = (), kwargs: dict | None = None,
                 breakpoints: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.fn, self.activation_name = fn, name
        self.args, self.kwargs = tuple(args), {k: v for k, v in (kwargs or {}).items() if k != "inplace"}
        self.breakpoints = tuple(breakpoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args, **self.kwargs)


class ActivationSlot(nn.Module):
    """Placeholder that runs the original activation and hands its input to ``observer``."""

    def __init__(self, activation: nn.Module, observer: nn.Module | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.observer = observer if observer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.observer(x))


class CallSites(nn.Module):
    """One activation module called ``n`` times per forward, split into ``n`` modules named
    ``"0" .. "n-1"`` (one slot, interval and polynomial per call). Traced models call the
    parts directly; otherwise the ``k``-th call of a forward runs part ``k`` (the counter is
    reset by a hook on the root module before every forward)."""

    def __init__(self, module: nn.Module, calls: int) -> None:
        super().__init__()
        for k in range(calls):
            self.add_module(str(k), copy.deepcopy(module))
        self.calls = calls
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = getattr(self, str(self.count % self.calls))
        self.count += 1
        return part(x)


def reset_call_sites(root: nn.Module, *_: Any) -> None:
    """Forward pre-hook of a model with :class:`CallSites`: start counting calls at 0."""
    for module in root.modules():
        if isinstance(module, CallSites):
            module.count = 0
