"""Find every non-polynomial operation of a model and give each activation a named slot.

``prepare_structure`` traces the model with ``torch.fx`` (zoo activations are leaves), keeps
polynomial operations, turns functional activations (``F.gelu``, ``x.relu()``) into modules,
replaces max pooling by average pooling, and reports anything else as unsupported. Models that
fx cannot trace fall back to swapping activation modules in place; functional activations
inside such models are then caught at calibration time (:class:`FunctionalCallDetector`).
The result is deterministic, so a saved PANN can be rebuilt from its original model.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx
from torch import nn
from torch.overrides import TorchFunctionMode

from .activations import activation_breakpoints, activation_name, get_activation
from .ops import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    MAXPOOL_FUNCTIONS,
    MAXPOOL_MODULES,
    POLYNOMIAL_FUNCTIONS,
    POLYNOMIAL_METHODS,
    POLYNOMIAL_MODULES,
    describe,
    hint_for,
    is_constant_divisor,
)


class UnsupportedOperationError(ValueError):
    """The model uses operations that no polynomial network (and no CKKS backend) can run."""


class FunctionActivation(nn.Module):
    """A functional activation call such as ``F.gelu(x, approximate="tanh")`` or ``x.relu()``
    as a module, so that it can be observed, fitted and replaced like ``nn.GELU``."""

    def __init__(self, fn: Callable, name: str, args: tuple = (), kwargs: dict | None = None) -> None:
        super().__init__()
        self.fn, self.activation_name = fn, name
        self.args, self.kwargs = tuple(args), {k: v for k, v in (kwargs or {}).items() if k != "inplace"}
        self.breakpoints = activation_breakpoints(get_activation(name))

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


@dataclass
class Site:
    """One activation to replace: where it lives in the prepared model and what it computes."""

    name: str
    op: str
    activation: nn.Module
    target: str


@dataclass
class Structure:
    """A model prepared for conversion: activation slots in place, plus what was found."""

    model: nn.Module
    sites: list[Site]
    notes: list[str] = field(default_factory=list)
    traced: bool = True


class _LeafTracer(torch.fx.Tracer):
    """Keeps zoo activations and polyact's own modules whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from .modules import PolyAct

        if activation_name(m) is not None or isinstance(m, (PolyAct, ActivationSlot, FunctionActivation)):
            return True
        return super().is_leaf_module(m, qualname)


def target_name(module: nn.Module) -> str:
    """Registry name of an activation module (or its class name)."""
    return getattr(module, "activation_name", None) or activation_name(module) or type(module).__name__


def _unsupported(kind: str, name: str, key: Any) -> str:
    return f"  - {kind} {name!r} ({describe(key)}): {hint_for(key)}"


def _check_function(node: torch.fx.Node, maxpool: str, problems: list[str], notes: list[str]) -> None:
    fn = node.target
    if fn in POLYNOMIAL_FUNCTIONS:
        return
    if fn in (operator.truediv, torch.div, torch.true_divide):
        if not is_constant_divisor(node.args[1] if len(node.args) > 1 else None):
            problems.append(_unsupported("operation", node.name, operator.truediv))
        return
    if fn in (operator.pow, torch.pow):
        exponent = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(exponent, int) and exponent >= 0):
            problems.append(f"  - operation {node.name!r} (pow): only non-negative integer powers are polynomial")
        return
    if fn in MAXPOOL_FUNCTIONS and maxpool == "avg" and not node.kwargs.get("return_indices", False):
        node.target = MAXPOOL_FUNCTIONS[fn]
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dilation", "return_indices")}
        notes.append(f"{node.name}: {describe(fn)} -> {describe(node.target)} (max is not a polynomial)")
        return
    problems.append(_unsupported("operation", node.name, fn))


def _check_method(node: torch.fx.Node, problems: list[str]) -> None:
    name = node.target
    if name in POLYNOMIAL_METHODS:
        return
    if name in ("div", "div_", "__truediv__"):
        if not is_constant_divisor(node.args[1] if len(node.args) > 1 else None):
            problems.append(_unsupported("operation", node.name, operator.truediv))
        return
    if name == "pow" and isinstance(node.args[1] if len(node.args) > 1 else None, int):
        return
    problems.append(_unsupported("method", node.name, name))


def _trace(model: nn.Module, maxpool: str) -> Structure:
    graph = _LeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    sites: list[Site] = []
    problems: list[str] = []
    notes: list[str] = []
    from .modules import PolyAct

    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, PolyAct):
                continue  # already polynomial (a partly converted model)
            if activation_name(module) is not None:
                sites.append(Site(node.target, describe(type(module)), module, target_name(module)))
            elif type(module) in MAXPOOL_MODULES and maxpool == "avg":
                avg = MAXPOOL_MODULES[type(module)](module)
                gm.set_submodule(node.target, avg)
                notes.append(f"{node.target}: {describe(type(module))} -> {describe(type(avg))} (max is not a polynomial)")
            elif not isinstance(module, POLYNOMIAL_MODULES):
                problems.append(_unsupported("module", node.target, type(module)))
        elif node.op in ("call_function", "call_method"):
            table = ACTIVATION_FUNCTIONS if node.op == "call_function" else ACTIVATION_METHODS
            if node.target in table:
                fn = node.target if node.op == "call_function" else getattr(torch.Tensor, node.target)
                activation = FunctionActivation(fn, table[node.target], node.args[1:], node.kwargs)
                slot_name = f"act_{node.name}"
                gm.add_submodule(slot_name, activation)
                with gm.graph.inserting_after(node):
                    replacement = gm.graph.call_module(slot_name, (node.args[0],))
                node.replace_all_uses_with(replacement)
                gm.graph.erase_node(node)
                sites.append(Site(slot_name, describe(fn) if node.op == "call_function" else f".{node.target}()",
                                  activation, activation.activation_name))
            elif node.op == "call_function":
                _check_function(node, maxpool, problems, notes)
            else:
                _check_method(node, problems)
    if problems:
        raise UnsupportedOperationError(
            "the model uses operations a polynomial network cannot evaluate:\n" + "\n".join(problems)
        )
    gm.graph.lint()
    gm.recompile()
    return Structure(gm, sites, notes, traced=True)


def _swap_modules(model: nn.Module, maxpool: str, reason: str) -> Structure:
    sites, notes = [], [f"torch.fx could not trace the model ({reason}); swapped activation modules in place"]
    for name, module in list(model.named_modules()):
        if name and activation_name(module) is not None:
            sites.append(Site(name, describe(type(module)), module, target_name(module)))
        elif name and type(module) in MAXPOOL_MODULES and maxpool == "avg":
            model.set_submodule(name, MAXPOOL_MODULES[type(module)](module))
            notes.append(f"{name}: {describe(type(module))} -> average pooling (max is not a polynomial)")
    return Structure(model, sites, notes, traced=False)


def prepare_structure(model: nn.Module, maxpool: str = "avg", use_fx: bool = True) -> Structure:
    """Copy ``model`` (eval mode) and locate its activations; see the module docstring.

    ``maxpool="avg"`` replaces max pooling by average pooling (reported in ``notes``);
    ``maxpool="error"`` reports it as unsupported instead.
    """
    if maxpool not in ("avg", "error"):
        raise ValueError(f"maxpool must be 'avg' or 'error', got {maxpool!r}")
    model = copy.deepcopy(model).eval()
    if use_fx:
        try:
            return _trace(model, maxpool)
        except UnsupportedOperationError:
            raise
        except Exception as exc:  # fx raises many kinds of errors on dynamic models
            return _swap_modules(model, maxpool, f"{type(exc).__name__}: {exc}".splitlines()[0])
    return _swap_modules(model, maxpool, "fx disabled")


def install(structure: Structure, make: Callable[[Site], nn.Module]) -> None:
    """Put ``make(site)`` in place of every activation site."""
    for site in structure.sites:
        structure.model.set_submodule(site.name, make(site))


class FunctionalCallDetector(TorchFunctionMode):
    """Records functional activations called outside activation slots (untraced models)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[str] = set()
        self.depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0:
            key = func if func in ACTIVATION_FUNCTIONS else getattr(func, "__name__", None)
            if key in ACTIVATION_FUNCTIONS or (isinstance(key, str) and key in ACTIVATION_METHODS):
                self.calls.add(describe(func))
        return func(*args, **(kwargs or {}))


def guard_slots(model: nn.Module, detector: FunctionalCallDetector) -> list:
    """Hooks that silence ``detector`` while an activation slot runs its own activation."""
    handles = []
    for module in model.modules():
        if isinstance(module, ActivationSlot):
            handles.append(module.register_forward_pre_hook(lambda *_: setattr(detector, "depth", detector.depth + 1)))
            handles.append(module.register_forward_hook(lambda *_: setattr(detector, "depth", detector.depth - 1)))
    return handles
