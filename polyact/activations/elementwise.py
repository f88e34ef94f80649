"""Elementwise functions of one tensor, beyond the activation zoo, that conversion fits like an
activation: with their exact constant arguments (a clamp's bounds, a LeakyReLU's slope, a
PReLU's learned per-channel slopes), and with the points where they are not smooth.

Modules are recognised by type, functions and tensor methods by identity or name; everything
here is evaluated through torch itself, so the fitted target is exactly what the model computes.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .fixed import activation_breakpoints
from .registry import activation_name

Breakpoints = Callable[[tuple, dict], tuple[float, ...]]


def _arg(args: tuple, kwargs: dict, index: int, key: str, default: Any) -> Any:
    """A call's argument given positionally (after the input) or by keyword."""
    return args[index] if len(args) > index else kwargs.get(key, default)


def _points(*values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))


def _clamp_points(args: tuple, kwargs: dict) -> tuple[float, ...]:
    return _points(_arg(args, kwargs, 0, "min", None), _arg(args, kwargs, 1, "max", None))


def _hardtanh_points(args: tuple, kwargs: dict) -> tuple[float, ...]:
    return _points(_arg(args, kwargs, 0, "min_val", -1.0), _arg(args, kwargs, 1, "max_val", 1.0))


def _kink(*points: float) -> Breakpoints:
    return lambda args, kwargs: points


# module type -> (target name, breakpoints of an instance)
MODULES: dict[type, tuple[str, Callable[[nn.Module], tuple[float, ...]]]] = {
    nn.ReLU6: ("relu6", lambda m: (0.0, 6.0)),
    nn.Hardtanh: ("hardtanh", lambda m: _points(m.min_val, m.max_val)),
    nn.Threshold: ("threshold", lambda m: _points(m.threshold)),
    nn.PReLU: ("prelu", lambda m: (0.0,)),
    nn.CELU: ("celu", lambda m: (0.0,)),
    nn.Softsign: ("softsign", lambda m: ()),
    nn.Tanhshrink: ("tanhshrink", lambda m: ()),
    nn.LogSigmoid: ("logsigmoid", lambda m: ()),
}

# function -> (target name, breakpoints from the arguments after the input)
FUNCTIONS: dict[Callable, tuple[str, Breakpoints]] = {
    F.relu6: ("relu6", _kink(0.0, 6.0)),
    F.hardtanh: ("hardtanh", _hardtanh_points), F.hardtanh_: ("hardtanh", _hardtanh_points),
    torch.clamp: ("clamp", _clamp_points), torch.clip: ("clamp", _clamp_points),
    torch.clamp_min: ("clamp", lambda a, k: _points(_arg(a, k, 0, "min", None))),
    torch.clamp_max: ("clamp", lambda a, k: _points(_arg(a, k, 0, "max", None))),
    F.threshold: ("threshold", lambda a, k: _points(_arg(a, k, 0, "threshold", None))),
    F.celu: ("celu", _kink(0.0)), F.softsign: ("softsign", _kink()),
    F.tanhshrink: ("tanhshrink", _kink()), F.logsigmoid: ("logsigmoid", _kink()),
    torch.erf: ("erf", _kink()), torch.exp: ("exp", _kink()),
}

# tensor method name -> (target name, breakpoints from the arguments after the tensor)
METHODS: dict[str, tuple[str, Breakpoints]] = {
    "clamp": ("clamp", _clamp_points), "clip": ("clamp", _clamp_points),
    "clamp_": ("clamp", _clamp_points), "clip_": ("clamp", _clamp_points),
    "clamp_min": ("clamp", lambda a, k: _points(_arg(a, k, 0, "min", None))),
    "clamp_max": ("clamp", lambda a, k: _points(_arg(a, k, 0, "max", None))),
    "erf": ("erf", _kink()), "exp": ("exp", _kink()),
}


def module_name(module: nn.Module) -> str | None:
    """Target name of an elementwise module: a zoo activation or one of :data:`MODULES`."""
    name = activation_name(module)
    if name is not None:
        return name
    entry = MODULES.get(type(module))
    return entry[0] if entry else None


def module_breakpoints(module: nn.Module) -> tuple[float, ...]:
    """Kinks of an elementwise module (zoo activations: the registry's; others: from their
    arguments, e.g. a Hardtanh's bounds)."""
    entry = MODULES.get(type(module))
    return entry[1](module) if entry else activation_breakpoints(module)


def channel_slopes(module: nn.Module) -> np.ndarray | None:
    """The per-channel slopes of a PReLU with one slope per channel (else ``None``): its
    function differs per channel, so it is fitted per channel."""
    if isinstance(module, nn.PReLU) and module.weight.numel() > 1:
        return module.weight.detach().double().numpy().copy()
    return None


def prelu_channel(slope: float) -> Callable[[np.ndarray], np.ndarray]:
    """``x`` for ``x >= 0``, ``slope x`` below: one channel of a PReLU."""
    return lambda x: np.where(x >= 0, x, slope * x)
