"""Turn what a user passes as a fitting target (a name, a module, a callable) into a checked
float64 numpy function."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..activations.elementwise import module_breakpoints, module_name
from ..activations.fixed import activation_breakpoints
from ..activations.registry import get_activation


@dataclass(frozen=True)
class Target:
    """A scalar function ``fn`` (float64 arrays in and out) with its name and known kinks."""

    fn: Callable[[np.ndarray], np.ndarray]
    name: str
    breakpoints: tuple[float, ...] = field(default=())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate, raising a clear error on NaN or infinite values."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):  # non-finite values are reported below
            y = np.asarray(self.fn(x), dtype=np.float64)
        if y.shape != x.shape:
            y = np.broadcast_to(y, x.shape).copy()
        bad = ~np.isfinite(y)
        if bad.any():
            where = x[bad].ravel()[:3]
            raise ValueError(
                f"target {self.name!r} is not finite at x = {where.tolist()} inside the fitting "
                "interval; narrow the interval or fix the function"
            )
        return y


def _module_function(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    frozen = copy.deepcopy(module).double().eval()

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return frozen(torch.tensor(x, dtype=torch.float64)).numpy()  # a copy: inplace modules keep x

    return fn


def _callable_function(func: Callable[..., Any]) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        try:
            y = func(x)
        except (TypeError, AttributeError):
            y = func(torch.tensor(x, dtype=torch.float64))
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().double().numpy()
        return np.asarray(y, dtype=np.float64)

    return fn


def as_target(fn: Any) -> Target:
    """Resolve a registry name, an ``nn.Module`` (its current parameters) or a callable on
    numpy arrays or torch tensors."""
    if isinstance(fn, Target):
        return fn
    if isinstance(fn, str):
        module = get_activation(fn)
        return Target(_module_function(module), fn.lower(), activation_breakpoints(module))
    if isinstance(fn, nn.Module):
        name = getattr(fn, "activation_name", None) or module_name(fn) or type(fn).__name__
        return Target(_module_function(fn), name, module_breakpoints(fn))
    if callable(fn):
        return Target(_callable_function(fn), getattr(fn, "__name__", type(fn).__name__))
    raise TypeError(
        f"cannot fit {fn!r}: pass an activation name, an nn.Module or a callable on arrays"
    )
