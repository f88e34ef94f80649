"""Call-site discovery with ``torch.fx``: trace the model (activations are leaves), give every
call of an activation its own slot, fuse elementwise functions of one tensor into one activation,
turn max pooling into a polynomial tree (or average pooling, or a refusal), and list everything
else that is not polynomial, with what to do (see :mod:`polyact.convert.call_sites`)."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
from torch import nn

from ..activations import elementwise
from ..activations.registry import get_activation
from ..nn.inplace import InPlaceAliasError, resolve_inplace
from ..nn.maxpool import PolyMaxPool
from ..nn.poly_act import PolyAct
from ..nn.sites import CallSites, FunctionActivation
from ..nn.tracing import LeafTracer, location, source_line
from .sites import Site, Structure, UnsupportedOperationError, target_name
from .leaky_forms import rewrite_leaky_forms
from .trace_time import settle
from .supported_ops import (
    HINTS,
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

MAXPOOL_CHOICES = ("poly", "avg", "error")
MAXPOOL_HINT = ("use maxpool='poly' (max(a, b) = (a + b)/2 + |a - b|/2 with a composite |x|, exact up to "
                "2^-alpha) or maxpool='avg' (average pooling: changes the network, then fine-tune with "
                "`polyact train`)")



def _unsupported(kind: str, name: str, key: Any, node: torch.fx.Node | None = None) -> str:
    where = "" if node is None else (source_line(node) if kind == "module" else location(node))
    return f"  - {kind} {name!r} ({describe(key)}){where}: {hint_for(key)}"


def _maxpool_problem(name: str, key: Any) -> str:
    return f"  - {describe(key) if not isinstance(key, str) else key} {name!r}: max pooling is not a polynomial; {MAXPOOL_HINT}"


# ---- elementwise functions of one tensor ---------------------------------------------------
_SCALAR_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
                     operator.iadd, operator.isub, operator.imul, operator.itruediv,
                     torch.add, torch.sub, torch.mul, torch.neg, torch.div, torch.true_divide}
_SCALAR_METHODS = {"add", "sub", "mul", "div", "neg", "add_", "sub_", "mul_", "div_", "__truediv__"}
_PRODUCTS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_SUMS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub, "add", "sub", "add_", "sub_"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _key(node: torch.fx.Node) -> Any:
    return node.target if node.op in ("call_function", "call_method") else None


def _node_args(node: torch.fx.Node) -> list[Any]:
    return list(node.args) + list(node.kwargs.values())


def _activation_entry(node: torch.fx.Node, gm: torch.fx.GraphModule) -> tuple[str, tuple[float, ...]] | None:
    """``(target name, breakpoints)`` if ``node`` applies an activation (zoo or elementwise
    function with constant arguments) to one tensor, else ``None``."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        name = None if isinstance(module, PolyAct) else elementwise.module_name(module)
        return (name, elementwise.module_breakpoints(module)) if name else None
    if node.op not in ("call_function", "call_method") or not node.args or not isinstance(node.args[0], torch.fx.Node):
        return None
    if any(isinstance(a, torch.fx.Node) for a in _node_args(node)[1:]):
        return None
    rest, kwargs = tuple(node.args[1:]), dict(node.kwargs)
    zoo = ACTIVATION_FUNCTIONS if node.op == "call_function" else ACTIVATION_METHODS
    if node.target in zoo:
        name = zoo[node.target]
        if name == "gelu" and kwargs.get("approximate") == "tanh":
            name = "gelu_tanh"
        return name, elementwise.module_breakpoints(_zoo_module(name))
    table = elementwise.FUNCTIONS if node.op == "call_function" else elementwise.METHODS
    if node.target in table:
        name, points = table[node.target]
        return name, points(rest, kwargs)
    return None


def _zoo_module(name: str) -> nn.Module:
    return get_activation(name)


def _is_scalar_op(node: torch.fx.Node) -> bool:
    """An affine map of one tensor by constants (``x + 3``, ``x / 6``, ``-x``)."""
    key = _key(node)
    if key not in _SCALAR_FUNCTIONS and key not in _SCALAR_METHODS:
        return False
    args = _node_args(node)
    tensors = [a for a in args if isinstance(a, torch.fx.Node)]
    if len(tensors) != 1 or not all(_is_number(a) for a in args if not isinstance(a, torch.fx.Node)):
        return False
    return not (key in (operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "__truediv__")
                and node.args[0] is not tensors[0])


def _is_binary_op(node: torch.fx.Node) -> bool:
    """A sum, difference or product of two tensors."""
    key = _key(node)
    if key not in _PRODUCTS and key not in _SUMS:
        return False
    args = _node_args(node)
    return len(args) == 2 and all(isinstance(a, torch.fx.Node) for a in args)


def _root(node: torch.fx.Node) -> torch.fx.Node:
    """The tensor an activation input derives from through scalar affine maps only."""
    while _is_scalar_op(node):
        node = next(a for a in _node_args(node) if isinstance(a, torch.fx.Node))
    return node


def _region(root: torch.fx.Node, gm: torch.fx.GraphModule) -> tuple[list[torch.fx.Node], set[torch.fx.Node]]:
    """The nodes computing elementwise functions of ``root`` alone (activations, scalar maps,
    sums and products of such values), in order, and those depending on an activation."""
    region: list[torch.fx.Node] = []
    inside, nonlinear = {root}, set()
    started = False
    for node in gm.graph.nodes:
        if node is root:
            started = True
            continue
        if not started or not node.all_input_nodes or any(i not in inside for i in node.all_input_nodes):
            continue
        if _activation_entry(node, gm) or _is_scalar_op(node) or _is_binary_op(node):
            region.append(node)
            inside.add(node)
            if _activation_entry(node, gm) or any(i in nonlinear for i in node.all_input_nodes):
                nonlinear.add(node)
    return region, nonlinear


def _essential(node: torch.fx.Node, gm: torch.fx.GraphModule, nonlinear: set[torch.fx.Node]) -> bool:
    """Needs a polynomial: an activation, or a product involving an activation's output."""
    if _activation_entry(node, gm):
        return True
    return _key(node) in _PRODUCTS and _is_binary_op(node) and any(i in nonlinear for i in node.all_input_nodes)


def _expression(node: torch.fx.Node, root: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """A readable formula of ``node`` in terms of ``x`` (the root), e.g. ``x*sigmoid(x)``."""
    if node is root:
        return "x"
    entry = _activation_entry(node, gm)
    if entry:
        return f"{entry[0]}({_expression(node.args[0], root, gm)})"
    args = [_expression(a, root, gm) if isinstance(a, torch.fx.Node) else f"{a:g}" if _is_number(a) else repr(a)
            for a in _node_args(node)]
    if len(args) == 1:
        return f"-{args[0]}"
    symbol = "*" if _key(node) in _PRODUCTS else "+" if _key(node) in (operator.add, operator.iadd, torch.add, "add", "add_") else "-" if _key(node) in _SUMS else "/"
    return f"({args[0]}{symbol}{args[1]})" if symbol in "+-" else f"{args[0]}{symbol}{args[1]}"


def _fused_function(node: torch.fx.Node, root: torch.fx.Node, region: list[torch.fx.Node], gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``node`` as a traced module of its root (copies of the region nodes it depends on)."""
    needed, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n is not root and n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    graph = torch.fx.Graph()
    env = {root: graph.placeholder("x")}
    for n in region:
        if n in needed:
            env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(env[node])
    return torch.fx.GraphModule(gm, graph)


def replace_with_module(gm: torch.fx.GraphModule, node: torch.fx.Node, name: str, module: nn.Module, source: torch.fx.Node) -> None:
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        replacement = gm.graph.call_module(name, (source,))
    node.replace_all_uses_with(replacement)


def _activation_sites(gm: torch.fx.GraphModule) -> list[Site]:
    """Give every activation call its slot; fuse elementwise products (see module docstring).

    Within the elementwise region of a tensor ``x``, the values used outside the region are
    computed; an affine one (``relu(x) * 0.5``, ``relu(x) + x``) stays in the graph and its
    nonlinear inputs are computed in turn; every activation call is a site of its own; a product
    involving an activation's output (``x * sigmoid(x)``) is one fused function of ``x``."""
    sites: list[Site] = []
    handled: set[torch.fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node in handled or getattr(node, "_erased", False) or not _activation_entry(node, gm):
            continue
        root = _root(node.args[0])
        region, nonlinear = _region(root, gm)
        members = set(region)
        handled |= members
        needed = {n for n in region if n in nonlinear and any(u not in members for u in n.users)}
        singles, fused = [], []
        for n in reversed(region):
            if n not in needed:
                continue
            if not _essential(n, gm, nonlinear):
                needed.update(i for i in n.all_input_nodes if i in nonlinear)
            elif _activation_entry(n, gm):
                singles.append(n)
                needed.update(i for i in n.all_input_nodes if i in nonlinear)
            else:
                formula = _expression(n, root, gm)
                fused.append((n, FunctionActivation(_fused_function(n, root, region, gm), formula)))
        for n, fn in reversed(fused):
            replace_with_module(gm, n, f"act_{n.name}", fn, root)
            sites.append(Site(f"act_{n.name}", "elementwise", fn, fn.activation_name))
        for n in reversed(singles):
            sites.append(_single_site(gm, n, *_activation_entry(n, gm)))
        for n in reversed(region):
            if not n.users and not getattr(n, "_erased", False):
                gm.graph.erase_node(n)
    return sites


def _single_site(gm: torch.fx.GraphModule, node: torch.fx.Node, name: str, points: tuple[float, ...]) -> Site:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return Site(node.target, describe(type(module)), module, target_name(module))
    fn = node.target if node.op == "call_function" else getattr(torch.Tensor, node.target)
    activation = FunctionActivation(fn, name, node.args[1:], node.kwargs, points)
    slot = f"act_{node.name}"
    replace_with_module(gm, node, slot, activation, node.args[0])
    gm.graph.erase_node(node)
    op = describe(fn) if node.op == "call_function" else f".{node.target}()"
    return Site(slot, op, activation, name)


def _split_shared_modules(gm: torch.fx.GraphModule, notes: list[str]) -> None:
    """A module called at several places becomes a :class:`CallSites`, one part per call."""
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and elementwise.module_name(gm.get_submodule(node.target)):
            calls.setdefault(node.target, []).append(node)
    for target, nodes in calls.items():
        if len(nodes) > 1:
            gm.set_submodule(target, CallSites(gm.get_submodule(target), len(nodes)))
            for k, node in enumerate(nodes):
                node.target = f"{target}.{k}"
            notes.append(f"{target}: one module called {len(nodes)} times; each call is its own activation ({target}.0 .. {target}.{len(nodes) - 1})")


# ---- max pooling ---------------------------------------------------------------------------
def maxpool_sites(name: str, pool: PolyMaxPool) -> list[Site]:
    return [Site(f"{name}.abs{i}", f"max-pool level {i}", getattr(pool, f"abs{i}"), "abs", kind="maxpool")
            for i in range(pool.levels)]


def pool_note(name: str, kind: str, pool: PolyMaxPool | None) -> str:
    if pool is None:
        return f"{name}: {kind} -> average pooling (maxpool='avg': the network changes; see the measured accuracy)"
    return (f"{name}: {kind} -> max(a, b) = (a+b)/2 + |a-b|/2 over windows of {pool.gather.window}, "
            f"a tree of {pool.levels} |x| levels")


def _replace_maxpools(gm: torch.fx.GraphModule, maxpool: str, problems: list[str], notes: list[str]) -> tuple[list[Site], bool]:
    sites, averaged = [], False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(node.target)) in MAXPOOL_MODULES:
            module = gm.get_submodule(node.target)
            pool = pooled_module(module, maxpool, node.target, problems)
            if pool is not None:
                gm.set_submodule(node.target, pool)
                notes.append(pool_note(node.target, describe(type(module)), pool if isinstance(pool, PolyMaxPool) else None))
                sites += maxpool_sites(node.target, pool) if isinstance(pool, PolyMaxPool) else []
                averaged |= not isinstance(pool, PolyMaxPool)
        elif node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS:
            site_list, avg = _replace_maxpool_function(gm, node, maxpool, problems, notes)
            sites += site_list
            averaged |= avg
    return sites, averaged


def pooled_module(module: nn.Module, maxpool: str, name: str, problems: list[str]) -> nn.Module | None:
    if getattr(module, "return_indices", False):
        problems.append(f"  - {describe(type(module))} {name!r}: return_indices=True (unpooling by indices) has no polynomial form")
        return None
    if maxpool == "error":
        problems.append(_maxpool_problem(name, type(module)))
        return None
    if maxpool == "avg":
        return MAXPOOL_MODULES[type(module)](module)
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
        return PolyMaxPool.like(module)
    problems.append(f"  - {describe(type(module))} {name!r}: maxpool='poly' needs fixed windows; use "
                    "nn.MaxPool2d(kernel_size) sized for your input, or maxpool='avg'")
    return None


def _replace_maxpool_function(gm, node, maxpool, problems, notes) -> tuple[list[Site], bool]:
    fn = node.target
    kwargs = dict(node.kwargs)
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    if fn in (F_MAX_POOL1D, F_MAX_POOL2D):
        kwargs.update(zip(names, node.args[1:]))
    if kwargs.get("return_indices") or maxpool == "error" or (maxpool == "poly" and fn not in (F_MAX_POOL1D, F_MAX_POOL2D)):
        hint = _maxpool_problem(node.name, fn) if maxpool != "poly" else _unsupported("operation", node.name, fn, node) + \
            "; adaptive max pooling has no fixed window: use F.max_pool2d(x, k) or maxpool='avg'"
        problems.append(hint)
        return [], False
    if maxpool == "avg":
        node.target = MAXPOOL_FUNCTIONS[fn]
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dilation", "return_indices")}
        notes.append(pool_note(node.name, describe(fn), None))
        return [], True
    dims = 1 if fn is F_MAX_POOL1D else 2
    pool = PolyMaxPool(kwargs["kernel_size"], kwargs.get("stride"), kwargs.get("padding", 0),
                       kwargs.get("dilation", 1), kwargs.get("ceil_mode", False), dims)
    name = f"maxpool_{node.name}"
    replace_with_module(gm, node, name, pool, node.args[0])
    gm.graph.erase_node(node)
    notes.append(pool_note(name, describe(fn), pool))
    return maxpool_sites(name, pool), False


F_MAX_POOL1D = torch.nn.functional.max_pool1d
F_MAX_POOL2D = torch.nn.functional.max_pool2d


# ---- everything else -----------------------------------------------------------------------
def _check_function(node: torch.fx.Node, problems: list[str]) -> None:
    fn = node.target
    if fn in POLYNOMIAL_FUNCTIONS:
        return
    if fn in (operator.truediv, torch.div, torch.true_divide, operator.itruediv):
        if not is_constant_divisor(node.args[1] if len(node.args) > 1 else None):
            problems.append(_unsupported("operation", node.name, operator.truediv, node))
        return
    if fn in (operator.pow, torch.pow):
        exponent = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(exponent, int) and exponent >= 0):
            problems.append(f"  - operation {node.name!r} (pow){location(node)}: only non-negative integer powers are polynomial")
        return
    problems.append(_unsupported("operation", node.name, fn, node))


def _check_method(node: torch.fx.Node, problems: list[str]) -> None:
    name = node.target
    if name in POLYNOMIAL_METHODS:
        return
    if name in ("div", "div_", "__truediv__"):
        if not is_constant_divisor(node.args[1] if len(node.args) > 1 else None):
            problems.append(_unsupported("operation", node.name, operator.truediv, node))
        return
    if name == "pow" and isinstance(node.args[1] if len(node.args) > 1 else None, int):
        return
    problems.append(_unsupported("method", node.name, name, node))


def _inner_problems(name: str, module: nn.Module) -> str:
    """What inside a refused container module (nn.TransformerEncoderLayer) is not polynomial."""
    inner = [f"{describe(type(m))} '{name}.{n}': {hint_for(type(m))}" for n, m in module.named_modules()
             if n and type(m) in HINTS]
    return "" if not inner else "; it contains " + "; ".join(inner)


def _check_rest(gm: torch.fx.GraphModule, problems: list[str]) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if not isinstance(module, (PolyAct, FunctionActivation, PolyMaxPool, *POLYNOMIAL_MODULES)) \
                    and elementwise.module_name(module) is None:
                problems.append(_unsupported("module", node.target, type(module), node) + _inner_problems(node.target, module))
        elif node.op == "call_function":
            _check_function(node, problems)
        elif node.op == "call_method":
            _check_method(node, problems)


_MATMULS = {operator.matmul, torch.matmul, torch.mm, torch.bmm, torch.einsum, "matmul", "mm", "bmm", "__matmul__"}
_POWERS = {operator.pow, torch.pow, "pow", "pow_", torch.square, "square", "square_"}
_SHAPE_READERS = {"size", "dim", "numel"}
PRODUCT_HINT = ("a product of two values computed from the input (a squeeze-excitation gate scale * x, a power "
                "x ** n of a layer's output, x * sigmoid(beta * x) with a learned beta, attention) needs products of "
                "encrypted values, which polyact does not evaluate yet (planned with transformer support); remove or "
                "replace it (e.g. drop the gate, use a fixed activation such as nn.SiLU) and fine-tune")


def _input_dependent(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """Tensor values computed from the network input (sizes read from them are not)."""
    dependent: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            dependent.add(node)
        elif node.op == "call_method" and node.target in _SHAPE_READERS or \
                node.op == "call_function" and node.target is getattr:
            continue
        elif any(i in dependent for i in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _check_products(gm: torch.fx.GraphModule, problems: list[str]) -> None:
    """Refuse products of two input-dependent tensors (what lowering could not express)."""
    dependent = _input_dependent(gm)
    for node in gm.graph.nodes:
        key = _key(node)
        operands = [a for a in _node_args(node) if isinstance(a, torch.fx.Node) and a in dependent]
        if key in _POWERS and operands and node.args[0] in dependent:
            exponent = 2 if key in (torch.square, "square", "square_") else (node.args[1] if len(node.args) > 1 else None)
            product = isinstance(exponent, int) and exponent >= 2
        else:
            product = (key in _PRODUCTS or key in _MATMULS) and len(operands) >= 2
        if product:
            problems.append(f"  - product {node.name!r}{location(node)}: {PRODUCT_HINT}")


def trace_sites(model: nn.Module, maxpool: str, example: torch.Tensor | None = None) -> Structure:
    graph = LeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    problems: list[str] = []
    try:
        notes = resolve_inplace(gm) + settle(gm, example) + rewrite_leaky_forms(gm)
    except InPlaceAliasError as exc:
        raise UnsupportedOperationError(str(exc)) from None
    _split_shared_modules(gm, notes)
    pool_sites, averaged = _replace_maxpools(gm, maxpool, problems, notes)
    sites = _activation_sites(gm)
    _check_rest(gm, problems)
    _check_products(gm, problems)
    if problems:
        raise UnsupportedOperationError(
            "the model uses operations a polynomial network cannot evaluate:\n" + "\n".join(problems)
        )
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    if any(isinstance(m, PolyMaxPool) for m in gm.modules()):  # inline the max-pool trees
        gm = torch.fx.GraphModule(gm, LeafTracer().trace(gm), class_name=type(model).__name__)
    order = {n.target: i for i, n in enumerate(gm.graph.nodes) if n.op == "call_module"}
    sites = sorted(sites + pool_sites, key=lambda s: order.get(s.name, order.get(s.name.rsplit(".", 1)[0], len(order))))
    return Structure(gm, sites, notes, traced=True, avg_pooled=averaged)
