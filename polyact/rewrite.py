"""Find every non-polynomial operation of a model and give each call of an activation its own
named slot.

``prepare_structure`` traces the model with ``torch.fx`` (activations are leaves) and

- gives every *call* of an activation its own slot: a module called twice (torchvision's
  ``BasicBlock.relu``) becomes a :class:`CallSites` container whose calls are ``relu.0`` and
  ``relu.1``; functional calls (``F.gelu``, ``x.relu()``, ``torch.clamp``, in a loop or not)
  become modules named ``act_<node>``;
- fits elementwise functions of one tensor as one activation: ``x * torch.sigmoid(x)`` or
  ``x * F.relu6(x + 3) / 6`` (a product involving an activation of the same tensor) becomes
  one :class:`FunctionActivation` of ``x``;
- turns max pooling into the polynomial tree of :mod:`polyact.nn.maxpool` (``maxpool="poly"``),
  into average pooling (``"avg"``, reported) or refuses it (``"error"``);
- reports anything else that is not polynomial by name, with what to do.

Models that fx cannot trace fall back to swapping modules in place (a module called ``n``
times per forward, counted on an example input, becomes a :class:`CallSites` that dispatches
its calls in order); functional activations inside such models are then caught at calibration
time (:class:`FunctionalCallDetector`). The result is deterministic, so a saved PANN can be
rebuilt from its original model.
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

from .activations import elementwise
from .nn.maxpool import PolyMaxPool
from .nn.sites import ActivationSlot, CallSites, FunctionActivation, reset_call_sites
from .nn.tracing import LeafTracer
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

MAXPOOL_CHOICES = ("poly", "avg", "error")
MAXPOOL_HINT = ("use maxpool='poly' (max(a, b) = (a + b)/2 + |a - b|/2 with a composite |x|, exact up to "
                "2^-alpha) or maxpool='avg' (average pooling: changes the network, then fine-tune with "
                "`polyact train`)")


class UnsupportedOperationError(ValueError):
    """The model uses operations that no polynomial network (and no CKKS backend) can run."""


@dataclass
class Site:
    """One activation to replace: where it lives in the prepared model and what it computes.
    ``kind`` is ``"activation"`` or ``"maxpool"`` (an ``|x|`` of a polynomial max-pool tree)."""

    name: str
    op: str
    activation: nn.Module
    target: str
    kind: str = "activation"


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


def target_name(module: nn.Module) -> str:
    """Registry name of an activation module (or its class name)."""
    return getattr(module, "activation_name", None) or elementwise.module_name(module) or type(module).__name__


def _unsupported(kind: str, name: str, key: Any) -> str:
    return f"  - {kind} {name!r} ({describe(key)}): {hint_for(key)}"


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
    from .nn.poly_act import PolyAct

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
    from .activations.registry import get_activation

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


def _replace_with_module(gm: torch.fx.GraphModule, node: torch.fx.Node, name: str, module: nn.Module, source: torch.fx.Node) -> None:
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
            _replace_with_module(gm, n, f"act_{n.name}", fn, root)
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
    _replace_with_module(gm, node, slot, activation, node.args[0])
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
def _maxpool_sites(name: str, pool: PolyMaxPool) -> list[Site]:
    return [Site(f"{name}.abs{i}", f"max-pool level {i}", getattr(pool, f"abs{i}"), "abs", kind="maxpool")
            for i in range(pool.levels)]


def _pool_note(name: str, kind: str, pool: PolyMaxPool | None) -> str:
    if pool is None:
        return f"{name}: {kind} -> average pooling (maxpool='avg': the network changes; see the measured accuracy)"
    return (f"{name}: {kind} -> max(a, b) = (a+b)/2 + |a-b|/2 over windows of {pool.gather.window}, "
            f"a tree of {pool.levels} |x| levels")


def _replace_maxpools(gm: torch.fx.GraphModule, maxpool: str, problems: list[str], notes: list[str]) -> tuple[list[Site], bool]:
    sites, averaged = [], False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(node.target)) in MAXPOOL_MODULES:
            module = gm.get_submodule(node.target)
            pool = _pooled_module(module, maxpool, node.target, problems)
            if pool is not None:
                gm.set_submodule(node.target, pool)
                notes.append(_pool_note(node.target, describe(type(module)), pool if isinstance(pool, PolyMaxPool) else None))
                sites += _maxpool_sites(node.target, pool) if isinstance(pool, PolyMaxPool) else []
                averaged |= not isinstance(pool, PolyMaxPool)
        elif node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS:
            site_list, avg = _replace_maxpool_function(gm, node, maxpool, problems, notes)
            sites += site_list
            averaged |= avg
    return sites, averaged


def _pooled_module(module: nn.Module, maxpool: str, name: str, problems: list[str]) -> nn.Module | None:
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
        hint = _maxpool_problem(node.name, fn) if maxpool != "poly" else _unsupported("operation", node.name, fn) + \
            "; adaptive max pooling has no fixed window: use F.max_pool2d(x, k) or maxpool='avg'"
        problems.append(hint)
        return [], False
    if maxpool == "avg":
        node.target = MAXPOOL_FUNCTIONS[fn]
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dilation", "return_indices")}
        notes.append(_pool_note(node.name, describe(fn), None))
        return [], True
    dims = 1 if fn is F_MAX_POOL1D else 2
    pool = PolyMaxPool(kwargs["kernel_size"], kwargs.get("stride"), kwargs.get("padding", 0),
                       kwargs.get("dilation", 1), kwargs.get("ceil_mode", False), dims)
    name = f"maxpool_{node.name}"
    _replace_with_module(gm, node, name, pool, node.args[0])
    gm.graph.erase_node(node)
    notes.append(_pool_note(name, describe(fn), pool))
    return _maxpool_sites(name, pool), False


F_MAX_POOL1D = torch.nn.functional.max_pool1d
F_MAX_POOL2D = torch.nn.functional.max_pool2d


# ---- everything else -----------------------------------------------------------------------
def _check_function(node: torch.fx.Node, problems: list[str]) -> None:
    fn = node.target
    if fn in POLYNOMIAL_FUNCTIONS:
        return
    if fn in (operator.truediv, torch.div, torch.true_divide, operator.itruediv):
        if not is_constant_divisor(node.args[1] if len(node.args) > 1 else None):
            problems.append(_unsupported("operation", node.name, operator.truediv))
        return
    if fn in (operator.pow, torch.pow):
        exponent = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(exponent, int) and exponent >= 0):
            problems.append(f"  - operation {node.name!r} (pow): only non-negative integer powers are polynomial")
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


def _check_rest(gm: torch.fx.GraphModule, problems: list[str]) -> None:
    from .nn.poly_act import PolyAct

    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if not isinstance(module, (PolyAct, FunctionActivation, PolyMaxPool, *POLYNOMIAL_MODULES)) \
                    and elementwise.module_name(module) is None:
                problems.append(_unsupported("module", node.target, type(module)))
        elif node.op == "call_function":
            _check_function(node, problems)
        elif node.op == "call_method":
            _check_method(node, problems)


def _trace(model: nn.Module, maxpool: str) -> Structure:
    graph = LeafTracer().trace(model)
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    problems: list[str] = []
    notes: list[str] = []
    _split_shared_modules(gm, notes)
    pool_sites, averaged = _replace_maxpools(gm, maxpool, problems, notes)
    sites = _activation_sites(gm)
    _check_rest(gm, problems)
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


@torch.no_grad()
def count_calls(model: nn.Module, example: torch.Tensor | None) -> dict[str, int]:
    """How often each activation module runs in one forward on ``example`` (modules called
    more than once only); empty without an example or when the forward fails."""
    if example is None:
        return {}
    counts: dict[str, int] = {}
    handles = [m.register_forward_hook(lambda *_, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
               for name, m in model.named_modules() if name and elementwise.module_name(m)]
    try:
        model(example)
    except Exception:  # the caller's forward will raise its own error during calibration
        return {}
    finally:
        for h in handles:
            h.remove()
    return {name: n for name, n in counts.items() if n > 1}


def _swap_modules(model: nn.Module, maxpool: str, reason: str, call_counts: dict[str, int]) -> Structure:
    sites: list[Site] = []
    notes = [f"torch.fx could not trace the model ({reason}); swapped activation modules in place"]
    problems: list[str] = []
    averaged, claimed = False, ()
    for name, module in list(model.named_modules()):
        if not name or name.startswith(claimed):
            continue
        if type(module) in MAXPOOL_MODULES:
            pool = _pooled_module(module, maxpool, name, problems)
            if pool is not None:
                model.set_submodule(name, pool)
                notes.append(_pool_note(name, describe(type(module)), pool if isinstance(pool, PolyMaxPool) else None))
                sites += _maxpool_sites(name, pool) if isinstance(pool, PolyMaxPool) else []
                averaged |= not isinstance(pool, PolyMaxPool)
        elif elementwise.module_name(module) is not None:
            calls = call_counts.get(name, 1)
            if calls > 1:
                model.set_submodule(name, CallSites(module, calls))
                sites += [Site(f"{name}.{k}", describe(type(module)), getattr(model.get_submodule(name), str(k)),
                               target_name(module)) for k in range(calls)]
                notes.append(f"{name}: one module called {calls} times per forward; each call is its own activation")
            else:
                sites.append(Site(name, describe(type(module)), module, target_name(module)))
        else:
            continue
        claimed = (*claimed, name + ".")
    if problems:
        raise UnsupportedOperationError("the model uses operations a polynomial network cannot evaluate:\n" + "\n".join(problems))
    if any(n > 1 for n in call_counts.values()):
        model.register_forward_pre_hook(reset_call_sites)
    return Structure(model, sites, notes, traced=False, call_counts=dict(call_counts), avg_pooled=averaged)


def prepare_structure(model: nn.Module, maxpool: str = "poly", use_fx: bool = True,
                      call_counts: dict[str, int] | None = None, example: torch.Tensor | None = None) -> Structure:
    """Copy ``model`` (eval mode) and locate its activations; see the module docstring.

    ``maxpool``: ``"poly"`` (polynomial max, default), ``"avg"`` (average pooling instead:
    the network changes) or ``"error"`` (refuse). ``call_counts`` (module name -> calls per
    forward) or an ``example`` input tells module swapping which modules run several times.
    """
    if maxpool not in MAXPOOL_CHOICES:
        raise ValueError(f"maxpool must be one of {MAXPOOL_CHOICES}, got {maxpool!r}")
    model = copy.deepcopy(model).eval()
    if use_fx:
        try:
            return _trace(model, maxpool)
        except UnsupportedOperationError:
            raise
        except Exception as exc:  # fx raises many kinds of errors on dynamic models
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        reason = "fx disabled"
    counts = call_counts if call_counts is not None else count_calls(model, example)
    return _swap_modules(model, maxpool, reason, counts)


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
            if key in ACTIVATION_FUNCTIONS or func in elementwise.FUNCTIONS or (
                    isinstance(key, str) and (key in ACTIVATION_METHODS or key in elementwise.METHODS)):
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
