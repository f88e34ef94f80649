"""Lower a PANN to a graph of affine maps and polynomial activations.

Between two nonlinearities a network only applies affine operations (linear and convolution
layers, batch normalisation in eval mode, average pooling, flattening, residual additions,
scalar factors). polyact merges each such block into one multi-input affine map

    y = sum_i W_i vec(s_i) + b,

where the ``s_i`` are *sources*: the network input and the outputs of ``PolyAct`` layers. The
``W_i`` are sparse (``scipy.sparse.csr_matrix``) and built from the layers' structure, one
operation at a time (:mod:`polyact.ir.linear_maps`): convolutions, linear layers and batch
normalisation from their weights, pooling from one probed channel, reshapes and slicing from
element indices; only small unusual operations are probed densely (with a size limit). Memory
and time grow with the number of non-zero weights, not with the square of the tensor size. Each
block is finally checked against torch on random inputs.

Under CKKS each affine map costs one level (a plaintext multiplication; it also absorbs the
next polynomial's input map ``t = (2x - a - b) / (b - a)``), and each polynomial its depth. A
degree-2 polynomial whose outputs only feed affine maps costs one level: written as
``A (t + B)^2 + C``, the shift folds into the preceding map and ``A``, ``C`` into the following
ones. :meth:`PolyGraph.depth` is the network's multiplicative depth under these rules, shared by
the conversion report and the encrypted compiler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np
import scipy.sparse as sp

from ..nn.poly_act import PolyAct

INPUT = "input"


class LoweringError(ValueError):
    """The PANN cannot be expressed as affine maps and polynomials (e.g. a product of two
    activations, or a model torch.fx cannot trace)."""


@dataclass
class AffineNode:
    """``y = sum_i W_i vec(s_i) + b`` reshaped to ``shape``; the ``W_i`` are sparse."""

    name: str
    sources: list[str]
    weights: list[sp.csr_matrix]
    bias: np.ndarray
    shape: tuple[int, ...]

    @property
    def identity(self) -> bool:
        """A single source passed through unchanged (no operation needed)."""
        return bool(len(self.weights) == 1 and is_identity(self.weights[0]) and not self.bias.any())


def is_identity(w: sp.spmatrix) -> bool:
    """``w`` is a square identity matrix (checked on its non-zeros, never densified)."""
    return w.shape[0] == w.shape[1] and (w - sp.identity(w.shape[0], format="csr")).count_nonzero() == 0


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
                out = sum((w @ values[s].T).T for s, w in zip(node.sources, node.weights)) + node.bias
            else:
                flat = values[node.source]
                polys = node.slot_polynomials()
                if len(polys) == 1:
                    out = polys[0](flat)
                else:
                    out = np.stack([polys[i](flat[:, i]) for i in range(flat.shape[1])], axis=1)
            values[name] = out
        return values[self.output]
