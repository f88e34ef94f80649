"""Lower a PANN (:mod:`polyact.ir.graph`): trace it with ``torch.fx``, cut it at its
``PolyAct`` layers, and turn every affine block between them into one sparse multi-input map,
built from the layers' structure (:mod:`polyact.ir.linear_maps`) and checked against torch."""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..nn.inplace import InPlaceAliasError, resolve_inplace
from ..nn.poly_act import PolyAct
from ..nn.tracing import LeafTracer
from . import linear_maps
from .graph import INPUT, AffineNode, LoweringError, Node, PolyGraph, PolyNode

SQUARE_SHIFT_LIMIT = 8.0


def _graph_module(pann: nn.Module) -> torch.fx.GraphModule:
    if isinstance(pann, torch.fx.GraphModule):
        return copy.deepcopy(pann)
    try:
        graph = LeafTracer().trace(pann)
    except Exception as exc:
        raise LoweringError(
            f"torch.fx cannot trace this model ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "depth analysis and encryption need a traceable forward (no data-dependent control flow)"
        ) from exc
    gm = torch.fx.GraphModule(pann, graph)
    try:
        resolve_inplace(gm)  # later readers of a tensor changed in place read the new value
    except InPlaceAliasError as exc:
        raise LoweringError(str(exc)) from None
    return gm


def _ancestors(node: torch.fx.Node, sources: set[str]) -> tuple[list[torch.fx.Node], list[torch.fx.Node]]:
    """Non-source ancestors of ``node`` (including it) and the sources they reach."""
    inner, reached, stack, seen = [], [], [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.name in sources:
            reached.append(n)
        else:
            inner.append(n)
            stack.extend(n.all_input_nodes)
    return inner, reached


def _submodule(gm: torch.fx.GraphModule, value: torch.fx.Node, sources: set[str]) -> tuple[torch.fx.GraphModule, list[torch.fx.Node]]:
    inner, reached = _ancestors(value, sources)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    reached.sort(key=order.__getitem__)
    graph = torch.fx.Graph()
    env = {src: graph.placeholder(src.name) for src in reached}
    for n in sorted(inner, key=order.__getitem__):
        env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(env[value])
    return torch.fx.GraphModule(gm, graph), reached


def _not_affine(what: str) -> LoweringError:
    return LoweringError(
        f"{what}: the operations between activations are not affine (e.g. a product of two "
        f"activations); encrypted inference supports linear layers, residual adds and scalar "
        f"factors between polynomial activations"
    )


def _product(matrix: sp.spmatrix, w: sp.csr_matrix, w_is_identity: bool) -> sp.csr_matrix:
    """``matrix @ w``, with shortcuts for an identity ``w`` and a diagonal ``matrix``."""
    if w_is_identity:
        return matrix.tocsr()
    if matrix.format == "dia" and tuple(matrix.offsets) == (0,):
        out = w.tocsr(copy=True)
        out.data *= np.repeat(matrix.diagonal(), np.diff(out.indptr))
        return out
    return (matrix @ w).tocsr()


@dataclass
class _Affine:
    """A value inside an affine block: ``sum_s parts[s] vec(s) + bias`` of ``shape``; the
    parts named in ``eye`` are identities (a source itself)."""

    shape: tuple[int, ...]
    parts: dict[str, sp.csr_matrix]
    bias: np.ndarray
    eye: frozenset = frozenset()

    @classmethod
    def source(cls, name: str, shape: tuple[int, ...]) -> "_Affine":
        size = int(np.prod(shape, dtype=np.int64))
        return cls(shape, {name: sp.identity(size, format="csr")}, np.zeros(size), frozenset([name]))

    @classmethod
    def combine(cls, terms: list[tuple[sp.spmatrix, "_Affine"]], shape: tuple[int, ...], constant: np.ndarray) -> "_Affine":
        """``sum_i M_i a_i + constant``."""
        parts: dict[str, sp.csr_matrix] = {}
        bias = np.asarray(constant, dtype=np.float64).copy()
        for matrix, value in terms:
            for name, w in value.parts.items():
                product = _product(matrix, w, name in value.eye)
                parts[name] = product if name not in parts else (parts[name] + product).tocsr()
            bias = bias + matrix @ value.bias
        return cls(tuple(shape), parts, bias)

    def map(self, matrix: sp.spmatrix, shape: tuple[int, ...], bias: np.ndarray | float = 0.0) -> "_Affine":
        return _Affine.combine([(matrix, self)], shape, np.broadcast_to(np.asarray(bias, dtype=np.float64), (matrix.shape[0],)))

    def scaled(self, factor: np.ndarray | float) -> "_Affine":
        size = self.bias.size
        return self.map(sp.diags(np.broadcast_to(np.asarray(factor, dtype=np.float64), (size,)), format="dia"), self.shape)


def _linear(x: _Affine, weight: np.ndarray, bias: np.ndarray | None, out_shape: tuple[int, ...]) -> _Affine:
    """``W x + b`` along the last axis. On a vector that is itself a map of the sources
    (``x = sum_s P_s s``, e.g. an adaptive pool replicating a 1x1 map 49 times before a VGG
    classifier), ``W P_s`` is computed directly, over the columns ``P_s`` uses: no sparse copy of
    ``W`` and nothing larger than ``W`` or the result is built."""
    if len(x.shape) > 1 or x.eye:
        matrix = linear_maps.last_axis_linear(weight, x.shape)
        return x.map(matrix, out_shape, 0.0 if bias is None else np.tile(bias, matrix.shape[0] // weight.shape[0]))
    parts = {}
    for name, part in x.parts.items():
        part = part.tocsc()
        cols = np.flatnonzero(np.diff(part.indptr))
        block = np.empty((weight.shape[0], cols.size))  # W P over the used columns, W never copied whole
        for k, j in enumerate(cols):
            rows = slice(part.indptr[j], part.indptr[j + 1])
            block[:, k] = weight[:, part.indices[rows]] @ part.data[rows]
        block = sp.csr_matrix(block)
        parts[name] = sp.csr_matrix((block.data, cols[block.indices], block.indptr), shape=(weight.shape[0], part.shape[1]))
    return _Affine(tuple(out_shape), parts, weight @ x.bias + (0.0 if bias is None else bias))


_CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__"}
_DIV = {operator.truediv, torch.div, torch.true_divide, "div", "div_", "__truediv__"}
_NEG = {operator.neg, torch.neg, "neg", operator.pos}


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def _conv_padding(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    if padding == "valid":
        return (0,) * len(kernel)
    if padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return _tuple(padding, len(kernel))


class _BlockBuilder:
    """Builds the affine value of every fx node from the network input and the ``PolyAct``
    outputs (its *sources*), one operation at a time (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, concrete: dict[torch.fx.Node, Any]) -> None:
        self.gm = gm
        self.concrete = concrete  # every node's value on a zero input (constants, sizes)
        self.values: dict[torch.fx.Node, Any] = {}  # source-dependent nodes -> _Affine (or tuple)

    def constant(self, arg: Any) -> Any:
        return torch.fx.node.map_arg(arg, self.concrete.__getitem__)

    def call(self, n: torch.fx.Node, replace: dict[torch.fx.Node, torch.Tensor]) -> Any:
        """``n`` evaluated with the tensors ``replace`` in place of some inputs."""
        pick = lambda a: replace[a] if a in replace else self.concrete[a]
        args, kwargs = torch.fx.node.map_arg(n.args, pick), torch.fx.node.map_arg(n.kwargs, pick)
        if n.op == "call_module":
            return self.gm.get_submodule(n.target)(*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        return getattr(args[0], n.target)(*args[1:], **kwargs)

    def lower(self, n: torch.fx.Node) -> Any:
        """The affine value of ``n`` (an :class:`_Affine`, or a tuple of them)."""
        deps = [a for a in n.all_input_nodes if a in self.values]
        out_shape = tuple(self.concrete[n].shape[1:]) if isinstance(self.concrete[n], torch.Tensor) else None
        key = type(self.gm.get_submodule(n.target)) if n.op == "call_module" else n.target
        if key is operator.getitem and isinstance(self.values.get(n.args[0]), tuple) and isinstance(n.args[1], int):
            return self.values[n.args[0]][n.args[1]]
        if key in _ADD | _SUB and len(n.args) == 2 and not n.kwargs and all(a in self.values for a in n.args):
            a, b = (self.values[v] for v in n.args)
            if isinstance(a, _Affine) and isinstance(b, _Affine) and a.shape == b.shape == out_shape:
                identity = sp.identity(a.bias.size, format="dia")
                return _Affine.combine([(identity, a), ((-1.0 if key in _SUB else 1.0) * identity, b)], out_shape,
                                       np.zeros(a.bias.size))
        if len(deps) == 1 and isinstance(self.values[deps[0]], _Affine) and out_shape is not None:
            structured = self._structured(n, key, deps[0], out_shape)
            if structured is not None:
                return structured
        if len(deps) == 2 and key in _MUL:
            raise _not_affine(n.format_node())
        return self._probed(n, deps)

    def _structured(self, n: torch.fx.Node, key: Any, dep: torch.fx.Node, out_shape: tuple[int, ...]) -> _Affine | None:
        x: _Affine = self.values[dep]
        first_only = bool(n.args) and n.args[0] is dep and all(a is not dep for a in n.args[1:]) and dep not in n.kwargs.values()
        if n.op == "call_module" and first_only:
            m = self.gm.get_submodule(n.target)
            if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.padding_mode == "zeros":
                return self._conv(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, out_shape)
            if isinstance(m, nn.Linear):
                return _linear(x, m.weight.detach().numpy(), None if m.bias is None else m.bias.detach().numpy(), out_shape)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training and m.running_mean is not None:
                scale = (1.0 / torch.sqrt(m.running_var + m.eps)).detach().numpy()
                shift = -m.running_mean.detach().numpy() * scale
                if m.affine:
                    scale, shift = scale * m.weight.detach().numpy(), shift * m.weight.detach().numpy() + m.bias.detach().numpy()
                inner = x.bias.size // scale.size
                return x.map(linear_maps.channel_scale(scale, x.shape), out_shape, np.repeat(shift, inner))
            if isinstance(m, _POOL_MODULES):
                return x.map(linear_maps.probe_channelwise(m, x.shape)[0], out_shape)
            return None
        if n.op == "call_function" and key in _CONV_FUNCTIONS and first_only:
            bound = {**dict(zip(_CONV_ARGS, n.args)), **n.kwargs}
            return self._conv(x, self.constant(bound["weight"]), self.constant(bound.get("bias")), bound.get("stride", 1),
                              bound.get("padding", 0), bound.get("dilation", 1), bound.get("groups", 1), out_shape)
        if n.op == "call_function" and key is F.linear and first_only:
            weight, bias = self.constant(n.args[1] if len(n.args) > 1 else n.kwargs["weight"]), \
                self.constant(n.args[2] if len(n.args) > 2 else n.kwargs.get("bias"))
            return _linear(x, weight.detach().numpy(), None if bias is None else bias.detach().numpy(), out_shape)
        if n.op == "call_function" and key in _POOL_FUNCTIONS and first_only:
            return x.map(linear_maps.probe_channelwise(lambda t: self.call(n, {dep: t}), x.shape)[0], out_shape)
        if key in _NEG and first_only:
            return x.scaled(-1.0 if key is not operator.pos else 1.0)
        if key in _ADD | _SUB | _MUL | _DIV and len(n.args) == 2 and x.shape == out_shape:
            return self._scalar_arithmetic(n, key, dep, x, out_shape)
        return None

    def _conv(self, x: _Affine, weight, bias, stride, padding, dilation, groups, out_shape) -> _Affine | None:
        w = weight.detach().numpy()
        dims = w.ndim - 2
        dilation = _tuple(dilation, dims)
        matrix, shape = linear_maps.conv_matrix(w, x.shape, _tuple(stride, dims), _conv_padding(padding, w.shape[2:], dilation),
                                                dilation, int(groups))
        if shape != out_shape:
            return None
        return x.map(matrix, out_shape, 0.0 if bias is None else np.repeat(bias.detach().numpy(), matrix.shape[0] // w.shape[0]))

    def _scalar_arithmetic(self, n, key, dep, x: _Affine, out_shape) -> _Affine | None:
        """``x + c``, ``c + x``, ``x - c``, ``c - x``, ``x * c``, ``c * x``, ``x / c`` for a constant ``c``."""
        other = n.args[1] if n.args[0] is dep else n.args[0]
        if (isinstance(other, torch.fx.Node) and other in self.values) or n.kwargs:
            return None
        c = self.constant(other)
        try:
            c = torch.broadcast_to(torch.as_tensor(c, dtype=torch.float64), (1, *out_shape)).reshape(-1).numpy()
        except (RuntimeError, TypeError):
            return None
        if key in _ADD:
            return x.map(sp.identity(x.bias.size, format="dia"), out_shape, c)
        if key in _SUB:
            return x.map(sp.identity(x.bias.size, format="dia"), out_shape, -c) if n.args[0] is dep else x.scaled(-1.0).map(
                sp.identity(x.bias.size, format="dia"), out_shape, c)
        if key in _MUL:
            return x.scaled(c)
        return x.scaled(1.0 / c) if n.args[0] is dep else None

    def _probed(self, n: torch.fx.Node, deps: list[torch.fx.Node]) -> Any:
        """Reshapes, slicing and other data movement by index probing; anything else small by
        dense probing (size-limited)."""
        if any(not isinstance(self.values[d], _Affine) for d in deps):
            raise LoweringError(f"{n.format_node()}: cannot lower an operation on a tuple of tensors")
        shapes = [self.values[d].shape for d in deps]

        def outputs(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            out = self.call(n, dict(zip(deps, tensors)))
            return [out] if isinstance(out, torch.Tensor) else list(out)

        try:
            try:
                matrices, constants = linear_maps.probe_gather(outputs, shapes)
            except linear_maps.NotStructured:
                matrices, constants = linear_maps.probe_dense(outputs, shapes, n.format_node())
        except linear_maps.NotStructured:
            raise _not_affine(n.format_node()) from None
        except (ValueError, RuntimeError, TypeError) as exc:  # e.g. a boolean mask: never a raw torch error
            raise LoweringError(f"{n.format_node()}: cannot be lowered to affine maps ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        results = [_Affine.combine([(m, self.values[d]) for m, d in zip(per_input, deps)], tuple(out.shape[1:]), const)
                   for per_input, const, out in zip(matrices, constants, outputs([self.concrete[d] for d in deps]))]
        return results[0] if isinstance(self.concrete[n], torch.Tensor) else tuple(results)


def _is_tensor_value(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(v, torch.Tensor) for v in value)


def _check_block(gm: torch.fx.GraphModule, value: torch.fx.Node, sources: set[str], affine: _Affine, name: str,
                 shape_of: Any) -> None:
    """The built block equals torch on random inputs (a guard on every structured builder)."""
    sub, reached = _submodule(gm, value, sources)
    generator = torch.Generator().manual_seed(0)
    probes = [torch.randn((1, *shape_of(s)), dtype=torch.float64, generator=generator) for s in reached]
    with torch.no_grad():
        direct = sub(*probes)
    if not isinstance(direct, torch.Tensor):
        raise LoweringError(f"{name}: expected one tensor, got {type(direct).__name__}")
    direct = direct.reshape(-1).numpy()
    linear = affine.bias + sum(affine.parts[s.name] @ p.reshape(-1).numpy() for s, p in zip(reached, probes)
                               if s.name in affine.parts)
    if np.abs(direct - linear).max() > 1e-7 * (1.0 + np.abs(direct).max()):
        raise _not_affine(name)


def _square_foldable(node: PolyNode) -> bool:
    polys = node.slot_polynomials()
    if node.module.num_stages != 1 or node.module.product is not None or node.module.degree != 2:
        return False
    for p in polys:
        c0, c1, c2 = p.coef
        if abs(c2) < 1e-12 * max(1.0, abs(c1), abs(c0)) or abs(c1 / (4 * c2)) > SQUARE_SHIFT_LIMIT:
            return False
    return True


class ValueRecorder(torch.fx.Interpreter):
    """Runs the network once and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        self.values[n] = super().run_node(n)
        return self.values[n]


def lower(pann: nn.Module, input_shape: tuple[int, ...]) -> PolyGraph:
    """The :class:`PolyGraph` of ``pann`` for inputs of ``input_shape`` (no batch axis)."""
    gm = _graph_module(pann).double().eval()
    for module in gm.modules():
        if isinstance(module, PolyAct):
            module.monitor = False  # shape propagation feeds zeros, not data
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise LoweringError(f"the network must take one input tensor, found {len(placeholders)}")
    recorder = ValueRecorder(gm)
    with torch.no_grad():
        recorder.run(torch.zeros((1, *input_shape), dtype=torch.float64))
    builder = _BlockBuilder(gm, recorder.values)
    renamed = {placeholders[0].name: INPUT}
    sources = {placeholders[0].name}
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    nodes: dict[str, Node] = {}
    remaining = {n: len(n.users) for n in gm.graph.nodes}

    def shape_of(n: torch.fx.Node) -> tuple[int, ...]:
        return tuple(recorder.values[n].shape[1:])

    def affine_for(value: torch.fx.Node, name: str) -> str:
        affine = builder.values.get(value)
        if not isinstance(affine, _Affine):
            raise LoweringError(f"{name}: expected one tensor computed from the network input")
        _check_block(gm, value, sources, affine, name, shape_of)
        used = sorted(affine.parts, key=order.__getitem__)
        nodes[name] = AffineNode(name, [renamed[s] for s in used], [affine.parts[s] for s in used], affine.bias, affine.shape)
        return name

    output = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            builder.values[n] = _Affine.source(n.name, shape_of(n))
        elif n.op == "call_module" and isinstance(gm.get_submodule(n.target), PolyAct):
            source = affine_for(n.args[0], f"{n.target}.input")
            module = gm.get_submodule(n.target)
            nodes[n.target] = PolyNode(n.target, source, module, shape_of(n))
            renamed[n.name] = n.target
            sources.add(n.name)
            builder.values[n] = _Affine.source(n.name, shape_of(n))
        elif n.op == "output":
            value = n.args[0]
            if not isinstance(value, torch.fx.Node):
                raise LoweringError("the network must return a single tensor")
            if value.name in sources:
                output = renamed[value.name]
            else:
                output = affine_for(value, "output")
        elif any(a in builder.values for a in n.all_input_nodes) and _is_tensor_value(recorder.values[n]):
            builder.values[n] = builder.lower(n)
        for a in n.all_input_nodes:  # free intermediate maps once every user is built
            remaining[a] -= 1
            if remaining[a] == 0:
                builder.values.pop(a, None)
    assert output is not None
    graph = PolyGraph(tuple(input_shape), nodes, output)
    for node in graph.poly_nodes:
        consumers = [a for a in nodes.values() if isinstance(a, AffineNode) and node.name in a.sources]
        node.fold_square = bool(consumers) and output != node.name and _square_foldable(node)
    return graph
