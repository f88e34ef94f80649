"""In-place operations in a traced graph, made explicit.

``torch.fx`` records ``F.relu(y, inplace=True)``, ``nn.ReLU(inplace=True)``, ``y.relu_()`` or
``y += 1`` as a node with its own output, but PyTorch changes ``y`` itself: every later reader of
``y`` sees the new value (``z = F.relu(y, inplace=True); z + y`` is ``2 relu(y)``). Once the
activation becomes a polynomial that is not in place, the graph must say so explicitly:
:func:`resolve_inplace` makes every reader of ``y`` that runs after the in-place node read the
node's output instead (the same tensor in PyTorch). Readers before it keep the old value, as in
PyTorch. When ``y`` shares memory with another tensor (a view, or the base of one) that is read
later, the change would reach that tensor too; that case is refused by name.
"""
from __future__ import annotations

import inspect
import operator
from typing import Callable

import torch
import torch.fx

from .tracing import source_line

_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ipow,
                      operator.ifloordiv, operator.imod, operator.iand, operator.ior, operator.ixor}
# operations whose output may share memory with their (first) input
_VIEW_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                   torch.unsqueeze, torch.chunk, torch.split, torch.narrow, torch.t, torch.select, torch.unbind,
                   torch.movedim, torch.swapaxes, torch.swapdims, torch.diagonal, torch.detach}
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
                 "expand", "expand_as", "chunk", "split", "narrow", "t", "select", "unbind", "contiguous", "detach",
                 "to", "float", "type_as", "unfold", "movedim", "swapaxes", "diagonal", "as_strided", "__getitem__"}


class InPlaceAliasError(ValueError):
    """An in-place operation changes a tensor whose memory another tensor read later shares."""


def _takes_inplace(fn: Callable, args: tuple, kwargs: dict) -> bool:
    if kwargs.get("inplace") is True:
        return True
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return bound.arguments.get("inplace") is True


def _trailing_underscore(name: str) -> bool:
    return name.endswith("_") and not name.startswith("_")


def is_inplace(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    """Whether ``node`` changes its first argument in place."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return getattr(module, "inplace", False) is True
    if node.op == "call_method":
        return _trailing_underscore(node.target) or node.target in ("__iadd__", "__isub__", "__imul__", "__itruediv__")
    if node.op == "call_function":
        fn = node.target
        if fn in _INPLACE_OPERATORS:
            return True
        return _trailing_underscore(getattr(fn, "__name__", "")) or _takes_inplace(fn, node.args, node.kwargs)
    return False


def _is_view(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    return node.op == "call_method" and node.target in _VIEW_METHODS


def _aliases(value: torch.fx.Node) -> set[torch.fx.Node]:
    """Nodes that may share memory with ``value``: its bases and every view of them."""
    base = value
    while _is_view(base) and isinstance(base.args[0], torch.fx.Node):
        base = base.args[0]
    group, stack = set(), [base]
    while stack:
        n = stack.pop()
        if n not in group:
            group.add(n)
            stack.extend(u for u in n.users if _is_view(u) and u.args and u.args[0] is n)
    return group


def describe_node(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """``'layer1.relu' (nn.ReLU(inplace=True))`` or ``'relu_1' (F.relu)``: what a user recognises."""
    if node.op == "call_module":
        return f"{node.target!r} ({gm.get_submodule(node.target)!r})"
    what = f".{node.target}()" if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    return f"{node.name!r} ({what}){source_line(node)}"


_AUGMENTABLE = {operator.add, operator.sub, operator.mul, operator.truediv, operator.pow, operator.floordiv}


def _lost_augmented_assignment(node: torch.fx.Node, order: dict[torch.fx.Node, int]) -> bool:
    """``z += c`` traces as ``z + c`` (fx proxies have no ``__iadd__``): an unread arithmetic
    result whose input is read again later may be an in-place change fx did not record."""
    if node.op != "call_function" or node.target not in _AUGMENTABLE or node.users:
        return False
    first = node.args[0] if node.args else None
    return isinstance(first, torch.fx.Node) and any(order[u] > order[node] for u in first.users)


def resolve_inplace(gm: torch.fx.GraphModule) -> list[str]:
    """Rewire the readers of every tensor changed in place (see the module docstring); returns
    a note per rewired operation. Raises :class:`InPlaceAliasError` for a changed view, and for
    an augmented assignment the trace may have lost (``z = y; z += 1; relu(y)``)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    notes: list[str] = []
    for node in list(gm.graph.nodes):
        if _lost_augmented_assignment(node, order):
            raise InPlaceAliasError(
                f"{describe_node(node, gm)}: its result is never read, but {node.args[0].name!r} is read after it; "
                "if this is an augmented assignment (z += ...) on a tensor that another name still reads, torch "
                "changes that tensor in place and torch.fx cannot record it: write it out of place (z = z + ...) "
                "and use the new name, or delete the unused expression")
        if not is_inplace(node, gm):
            continue
        changed: torch.fx.Node = node.args[0]
        later = [u for u in changed.users if u is not node and order[u] > order[node]]
        for alias in _aliases(changed) - {changed}:
            readers = [u for u in alias.users if order[u] > order[node] and not _is_view(u)]
            if readers:
                raise InPlaceAliasError(
                    f"in-place operation {describe_node(node, gm)} changes {changed.name!r}, which shares memory "
                    f"with {alias.name!r}, read later by {readers[0].name!r}; a polynomial network cannot "
                    "reproduce that: use the out-of-place form (inplace=False, relu() instead of relu_())")
        for user in later:
            user.replace_input_with(changed, node)
        if later:
            notes.append(f"{describe_node(node, gm)} works in place: {len(later)} later reader(s) of "
                         f"{changed.name!r} ({', '.join(u.name for u in later)}) read its output, as in PyTorch")
    return notes
