"""What conversion finds in a model: the activation call sites to replace (:class:`Site`), the
prepared copy of the model that holds them (:class:`Structure`), and the refusal of anything a
polynomial network cannot compute (:class:`UnsupportedOperationError`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..activations import elementwise


class UnsupportedOperationError(ValueError):
    """The model uses operations that no polynomial network (and no CKKS backend) can run."""


@dataclass
class Site:
    """One activation to replace: where it lives in the prepared model and what it computes.
    ``kind`` is ``"activation"`` or ``"maxpool"`` (an ``|x|`` of a polynomial max-pool tree).
    ``inplace``: the site replaces an in-place module in a model that is not traced (module
    swapping), so its polynomial must work in place too (later readers of its input see it)."""

    name: str
    op: str
    activation: nn.Module
    target: str
    kind: str = "activation"
    inplace: bool = False


@dataclass
class Structure:
    """A model prepared for conversion: activation slots in place, plus what was found.
    ``call_counts`` records modules split into per-call parts (module swapping only)."""

    model: nn.Module
    sites: list[Site]
    notes: list[str] = field(default_factory=list)
    traced: bool = True
    call_counts: dict[str, int] = field(default_factory=dict)
    avg_pooled: bool = False
    fallback_reason: str = ""  # why torch.fx could not trace the model (module swapping only)


def target_name(module: nn.Module) -> str:
    """Registry name of an activation module (or its class name)."""
    return getattr(module, "activation_name", None) or elementwise.module_name(module) or type(module).__name__


def install(structure: Structure, make: Callable[[Site], nn.Module]) -> None:
    """Put ``make(site)`` in place of every activation site (working in place where the site's
    original did, see :class:`Site`)."""
    for site in structure.sites:
        module = make(site)
        if site.inplace:
            module.inplace = True
        structure.model.set_submodule(site.name, module)
