"""The activation zoo's names: ``get_activation(name)`` builds a module for training; the same
names are fitting targets for :func:`polyact.fit`. A trained module (its current parameters) is a
fitting target too.

Fixed activations reuse ``torch.nn`` modules, so models written with ``nn.ReLU`` or ``nn.GELU``
are recognised by :func:`activation_name` during conversion.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .fixed import Abs, Sign, Square
from .learnable import AGLU, APA, AULU, PAU, PWLU, XIELU, DiTAC
from .literature import LITERATURE, TAAF


def _taaf(inner: str = "tanh", **kwargs: Any) -> TAAF:
    """TAAF around the zoo's activation named ``inner``."""
    return TAAF(get_activation(inner), name=inner, **kwargs)


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "square": Square,
    "abs": Abs,
    "sign": Sign,
    "aulu": AULU,
    "xielu": XIELU,
    "apa": APA,
    "aglu": AGLU,
    "pwlu": PWLU,
    "pau": PAU,
    "ditac": DiTAC,
    **LITERATURE,
    "taaf": _taaf,
}

LEARNABLE = ("aulu", "xielu", "apa", "aglu", "pwlu", "pau", "ditac", "sqish", "lslu", "taaf", "apalu", "neaf", "raf")

_MODULE_NAMES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.Softplus: "softplus",
    nn.Mish: "mish",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    Square: "square",
    Abs: "abs",
    Sign: "sign",
    AULU: "aulu",
    XIELU: "xielu",
    APA: "apa",
    AGLU: "aglu",
    PWLU: "pwlu",
    PAU: "pau",
    DiTAC: "ditac",
    **{cls: name for name, cls in LITERATURE.items()},
}


def available_activations() -> list[str]:
    """Names accepted by :func:`get_activation` and :func:`polyact.fit`."""
    return sorted(ACTIVATIONS)


def get_activation(name: str, **kwargs: Any) -> nn.Module:
    """A fresh module for the activation ``name`` (keyword arguments go to its constructor)."""
    key = name.lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {', '.join(available_activations())}"
        )
    return ACTIVATIONS[key](**kwargs)


def activation_name(module: nn.Module) -> str | None:
    """The registry name of an activation module, or None if it is not in the zoo."""
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    return _MODULE_NAMES.get(type(module))
