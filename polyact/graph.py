"""Lower a PANN to a graph of affine maps and polynomial activations.

Between two nonlinearities a network only applies affine operations (linear and convolution
layers, batch normalisation in eval mode, average pooling, flattening, residual additions,
scalar factors). polyact merges each such block into one multi-input affine map

    y = sum_i W_i vec(s_i) + b,

where the ``s_i`` are *sources*: the network input and the outputs of ``PolyAct`` layers. The
maps are extracted exactly by probing the block with basis vectors (in float64) and checked
on random inputs, so batch normalisation is folded and any linear torch code is supported.

Under CKKS each affine map costs one level (a plaintext multiplication; it also absorbs the
next polynomial's input map ``t = (2x - a - b) / (b - a)``), and each polynomial its depth. A
degree-2 polynomial whose outputs only feed affine maps costs one level: written as
``A (t + B)^2 + C``, the shift folds into the preceding map and ``A``, ``C`` into the following
ones. :meth:`PolyGraph.depth` is the network's multiplicative depth under these rules, shared by
the conversion report and the encrypted compiler.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .modules import PolyAct
from .rewrite import _LeafTracer

INPUT = "input"
SQUARE_SHIFT_LIMIT = 8.0


class LoweringError(ValueError):
    """The PANN cannot be expressed as affine maps and polynomials (e.g. a product of two
    activations, or a model torch.fx cannot trace)."""


@dataclass
class AffineNode:
    """``y = sum_i W_i vec(s_i) + b`` reshaped to ``shape``."""

    name: str
    sources: list[str]
    weights: list[np.ndarray]
    bias: np.ndarray
    shape: tuple[int, ...]

    @property
    def identity(self) -> bool:
        """A single source passed through unchanged (no operation needed)."""
        w = self.weights[0]
        return (
            len(self.weights) == 1
            and w.shape[0] == w.shape[1]
            and np.array_equal(w, np.eye(w.shape[0]))
            and not self.bias.any()
        )


@dataclass
class PolyNode:
    """A ``PolyAct`` applied to the output of an affine node, element by element."""

    name: str
    source: str
    module: PolyAct
    shape: tuple[int, ...]
    fold_square: bool = False

    def slot_polynomials(self) -> list:
        """The polynomial of every element in flattened order (one object for a shared one)."""
        poly = self.module.polynomial
        if not isinstance(poly, list):
            return [poly]
        axis = self.module.channel_axis - 1  # shapes here have no batch axis
        inner = int(np.prod(self.shape[axis + 1 :], dtype=np.int64))
        return [poly[(i // inner) % len(poly)] for i in range(int(np.prod(self.shape)))]

    @property
    def cost(self) -> int:
        return 1 if self.fold_square else self.module.depth


Node = Union[AffineNode, PolyNode]


@dataclass
class PolyGraph:
    """Sources, affine maps and polynomials in topological order; ``output`` names the node
    whose value the network returns."""

    input_shape: tuple[int, ...]
    nodes: dict[str, Node]
    output: str
    notes: list[str] = field(default_factory=list)

    def affine_cost(self, node: AffineNode, consumer: str | None) -> int:
        """Levels of an affine node: none for a pass-through into the output or into a
        polynomial whose interval is already [-1, 1]; one otherwise."""
        if not node.identity:
            return 1
        if consumer is None:
            return 0
        poly = self.nodes[consumer]
        intervals = [p.interval for p in poly.slot_polynomials()] if isinstance(poly, PolyNode) else []
        return 0 if intervals and all(iv == (-1.0, 1.0) for iv in intervals) else 1

    def consumer_of(self, affine: str) -> str | None:
        for node in self.nodes.values():
            if isinstance(node, PolyNode) and node.source == affine:
                return node.name
        return None

    def depths(self) -> dict[str, int]:
        """Levels consumed up to each node's output."""
        depth: dict[str, int] = {INPUT: 0}
        for name, node in self.nodes.items():
            if isinstance(node, AffineNode):
                before = max(depth[s] for s in node.sources)
                depth[name] = before + self.affine_cost(node, self.consumer_of(name))
            else:
                depth[name] = depth[node.source] + node.cost
        return depth

    @property
    def depth(self) -> int:
        """Multiplicative depth of the whole network."""
        return self.depths()[self.output]

    @property
    def poly_nodes(self) -> list[PolyNode]:
        return [n for n in self.nodes.values() if isinstance(n, PolyNode)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the lowered network in float64 on a batch ``x`` of shape ``(N, *input_shape)``;
        equals the PANN up to rounding (used to check the lowering)."""
        values = {INPUT: np.asarray(x, dtype=np.float64).reshape(len(x), -1)}
        for name, node in self.nodes.items():
            if isinstance(node, AffineNode):
                out = sum(values[s] @ w.T for s, w in zip(node.sources, node.weights)) + node.bias
            else:
                flat = values[node.source]
                polys = node.slot_polynomials()
                if len(polys) == 1:
                    out = polys[0](flat)
                else:
                    out = np.stack([polys[i](flat[:, i]) for i in range(flat.shape[1])], axis=1)
            values[name] = out
        return values[self.output]


def _graph_module(pann: nn.Module) -> torch.fx.GraphModule:
    if isinstance(pann, torch.fx.GraphModule):
        return copy.deepcopy(pann)
    try:
        graph = _LeafTracer().trace(pann)
    except Exception as exc:
        raise LoweringError(
            f"torch.fx cannot trace this model ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "depth analysis and encryption need a traceable forward (no data-dependent control flow)"
        ) from exc
    return torch.fx.GraphModule(pann, graph)


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


@torch.no_grad()
def _probe(sub: torch.fx.GraphModule, shapes: list[tuple[int, ...]], name: str, chunk: int = 2048) -> tuple[list[np.ndarray], np.ndarray, tuple]:
    """Weights and bias of the affine map ``sub`` by evaluating it on basis vectors."""
    def run(inputs: list[torch.Tensor]) -> torch.Tensor:
        out = sub(*inputs)
        if not isinstance(out, torch.Tensor):
            raise LoweringError(f"{name}: expected one tensor, got {type(out).__name__}")
        return out

    zeros = [torch.zeros((1, *s), dtype=torch.float64) for s in shapes]
    base = run(zeros)
    out_shape = tuple(base.shape[1:])
    bias = base.reshape(-1).numpy().copy()
    weights = []
    for i, shape in enumerate(shapes):
        size = int(np.prod(shape, dtype=np.int64))
        columns = []
        for start in range(0, size, chunk):
            stop = min(size, start + chunk)
            batch = [torch.zeros((stop - start, *s), dtype=torch.float64) for s in shapes]
            batch[i] = torch.eye(size, dtype=torch.float64)[start:stop].reshape(stop - start, *shape)
            columns.append((run(batch).reshape(stop - start, -1) - base.reshape(1, -1)).numpy())
        weights.append(np.concatenate(columns).T.copy())
    generator = torch.Generator().manual_seed(0)
    probes = [torch.randn((3, *s), dtype=torch.float64, generator=generator) for s in shapes]
    direct = run(probes).reshape(3, -1).numpy()
    linear = sum(p.reshape(3, -1).numpy() @ w.T for p, w in zip(probes, weights)) + bias
    if np.abs(direct - linear).max() > 1e-7 * (1.0 + np.abs(direct).max()):
        ops = ", ".join(n.format_node() for n in sub.graph.nodes if n.op not in ("placeholder", "output"))
        raise LoweringError(
            f"{name}: the operations between activations are not affine (e.g. a product of two "
            f"activations); encrypted inference supports linear layers, residual adds and scalar "
            f"factors between polynomial activations. Operations: {ops}"
        )
    return weights, bias, out_shape


def _square_foldable(node: PolyNode) -> bool:
    polys = node.slot_polynomials()
    if node.module.num_stages != 1 or node.module.product is not None or node.module.degree != 2:
        return False
    for p in polys:
        c0, c1, c2 = p.coef
        if abs(c2) < 1e-12 * max(1.0, abs(c1), abs(c0)) or abs(c1 / (4 * c2)) > SQUARE_SHIFT_LIMIT:
            return False
    return True


def lower(pann: nn.Module, input_shape: tuple[int, ...]) -> PolyGraph:
    """The :class:`PolyGraph` of ``pann`` for inputs of ``input_shape`` (no batch axis)."""
    gm = _graph_module(pann).double().eval()
    for module in gm.modules():
        if isinstance(module, PolyAct):
            module.monitor = False  # shape propagation feeds zeros, not data
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise LoweringError(f"the network must take one input tensor, found {len(placeholders)}")
    ShapeProp(gm).propagate(torch.zeros((1, *input_shape), dtype=torch.float64))
    renamed = {placeholders[0].name: INPUT}
    sources = {placeholders[0].name}
    nodes: dict[str, Node] = {}

    def shape_of(n: torch.fx.Node) -> tuple[int, ...]:
        return tuple(n.meta["tensor_meta"].shape[1:])

    def affine_for(value: torch.fx.Node, name: str) -> str:
        sub, reached = _submodule(gm, value, sources)
        weights, bias, shape = _probe(sub, [shape_of(s) for s in reached], name)
        nodes[name] = AffineNode(name, [renamed[s.name] for s in reached], weights, bias, shape)
        return name

    output = None
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), PolyAct):
            source = affine_for(n.args[0], f"{n.target}.input")
            module = gm.get_submodule(n.target)
            nodes[n.target] = PolyNode(n.target, source, module, shape_of(n))
            renamed[n.name] = n.target
            sources.add(n.name)
        elif n.op == "output":
            value = n.args[0]
            if not isinstance(value, torch.fx.Node):
                raise LoweringError("the network must return a single tensor")
            if value.name in sources:
                output = renamed[value.name]
            else:
                output = affine_for(value, "output")
    assert output is not None
    graph = PolyGraph(tuple(input_shape), nodes, output)
    for node in graph.poly_nodes:
        consumers = [a for a in nodes.values() if isinstance(a, AffineNode) and node.name in a.sources]
        node.fold_square = bool(consumers) and output != node.name and _square_foldable(node)
    return graph
