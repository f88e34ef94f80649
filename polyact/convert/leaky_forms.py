"""Leaky ReLUs written without ``F.leaky_relu``, recognised in a traced graph and rewritten as the
activation they are (then fitted like any other):

* ``torch.where(x > 0, x, a * x)`` (also ``>=``, ``x < 0`` with the branches swapped, ``0.0`` for
  ``a * x``) is ``F.leaky_relu(x, a)`` for any ``a``;
* ``torch.maximum(x, a * x)`` is ``F.leaky_relu(x, a)`` for ``0 <= a <= 1`` (else it is not);
* ``F.prelu(x, weight)`` with a weight of the model is an ``nn.PReLU`` with that weight;
* ``nn.RReLU`` and ``F.rrelu`` in eval mode are ``LeakyReLU((lower + upper) / 2)``.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..nn.tracing import location

_GREATER = {operator.gt, operator.ge, torch.gt, torch.ge, torch.greater, torch.greater_equal, "gt", "ge", "greater",
            "greater_equal"}
_LESS = {operator.lt, operator.le, torch.lt, torch.le, torch.less, torch.less_equal, "lt", "le", "less", "less_equal"}
_MUL = {operator.mul, torch.mul, "mul"}
_MAXIMUM = {torch.maximum, torch.max, torch.fmax, "maximum", "max", "fmax"}


def _key(node: Any) -> Any:
    return node.target if isinstance(node, torch.fx.Node) and node.op in ("call_function", "call_method") else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _slope_of(value: Any, x: torch.fx.Node) -> float | None:
    """``a`` if ``value`` is ``a * x`` or ``x * a`` (or the number 0: ``a = 0``)."""
    if _number(value) == 0.0:
        return 0.0
    if _key(value) in _MUL and len(value.args) == 2 and not value.kwargs:
        left, right = value.args
        if left is x and _number(right) is not None:
            return _number(right)
        if right is x and _number(left) is not None:
            return _number(left)
    return None


def _positive_side(cond: Any) -> tuple[torch.fx.Node, bool] | None:
    """``(x, True)`` for ``x > 0`` (the first branch is the positive side), ``(x, False)`` for ``x < 0``."""
    key = _key(cond)
    if key not in _GREATER | _LESS or len(cond.args) != 2:
        return None
    left, right = cond.args
    if isinstance(left, torch.fx.Node) and _number(right) == 0.0:
        return left, key in _GREATER
    if isinstance(right, torch.fx.Node) and _number(left) == 0.0:
        return right, key in _LESS
    return None


def _leaky_of_where(node: torch.fx.Node) -> tuple[torch.fx.Node, float] | None:
    if node.target not in (torch.where, "where") or len(node.args) != 3 or node.kwargs:
        return None
    side = _positive_side(node.args[0])
    if side is None:
        return None
    x, first_positive = side
    positive, negative = node.args[1:] if first_positive else node.args[:0:-1]
    slope = _slope_of(negative, x) if positive is x else None
    return None if slope is None else (x, slope)


def _leaky_of_maximum(node: torch.fx.Node) -> tuple[torch.fx.Node, float] | None:
    if node.target not in _MAXIMUM or len(node.args) != 2 or node.kwargs:
        return None
    for x, other in (node.args, node.args[::-1]):
        if isinstance(x, torch.fx.Node):
            slope = _slope_of(other, x)
            if slope is not None and 0.0 <= slope <= 1.0:
                return x, slope
    return None


def _as_leaky_relu(gm: torch.fx.GraphModule, node: torch.fx.Node, x: torch.fx.Node, slope: float) -> None:
    with gm.graph.inserting_before(node):
        leaky = gm.graph.call_function(F.leaky_relu, (x, slope))
    leaky.meta = dict(node.meta)
    node.replace_all_uses_with(leaky)
    dead = [a for a in node.all_input_nodes if a is not x]
    gm.graph.erase_node(node)
    for n in dead:
        if not n.users:
            gm.graph.erase_node(n)


def rewrite_leaky_forms(gm: torch.fx.GraphModule) -> list[str]:
    """Rewrite the forms of the module docstring in place; returns a note for each."""
    notes: list[str] = []
    for node in list(gm.graph.nodes):
        found = None
        if node.op in ("call_function", "call_method"):
            found = _leaky_of_where(node) or _leaky_of_maximum(node)
        if found is not None:
            notes.append(f"{node.name}{location(node)}: {node.target if isinstance(node.target, str) else node.target.__name__}"
                         f" is a leaky ReLU, fitted as F.leaky_relu(x, {found[1]:g})")
            _as_leaky_relu(gm, node, *found)
        elif node.op == "call_function" and node.target is F.rrelu:
            args = dict(zip(("input", "lower", "upper", "training"), node.args), **node.kwargs)
            if not args.get("training", False):
                slope = (args.get("lower", 1.0 / 8) + args.get("upper", 1.0 / 3)) / 2
                notes.append(f"{node.name}{location(node)}: F.rrelu in eval mode is F.leaky_relu(x, {slope:g})")
                _as_leaky_relu(gm, node, node.args[0], slope)
        elif node.op == "call_function" and node.target is F.prelu and len(node.args) == 2 \
                and isinstance(node.args[1], torch.fx.Node) and node.args[1].op == "get_attr":
            weight = gm.get_parameter(node.args[1].target)
            module = nn.PReLU(weight.numel())
            module.weight = weight
            name = f"prelu_{node.name}"
            gm.add_submodule(name, module)
            with gm.graph.inserting_before(node):
                call = gm.graph.call_module(name, (node.args[0],))
            call.meta = dict(node.meta)
            notes.append(f"{name}{location(node)}: F.prelu with the model's weight {node.args[1].target!r} is an nn.PReLU")
            node.replace_all_uses_with(call)
            gm.graph.erase_node(node)
        elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.RReLU):
            module = gm.get_submodule(node.target)
            if not module.training:
                slope = (module.lower + module.upper) / 2
                gm.set_submodule(node.target, nn.LeakyReLU(slope))
                notes.append(f"{node.target}: nn.RReLU in eval mode is nn.LeakyReLU({slope:g})")
    return notes
