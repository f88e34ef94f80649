"""Encrypted layers: affine maps on packed vectors (baby-step giant-step diagonal method) and
polynomial activations.

Layout. Every value (a flattened tensor) has slot positions (:mod:`he_backend.lowering.layout`)
within a footprint of ``F`` slots, cut into blocks of ``P`` slots. If ``F <= P`` one sample
lives in block ``b`` of a ciphertext (slots ``[b P, (b + 1) P)``, zero-padded); one sample per
ciphertext gives the lowest latency, ``slots / P`` samples per ciphertext the best throughput,
and the operations are the same. If ``F > P`` (then ``P`` is the whole ciphertext) the value
spans ``ceil(F / P)`` ciphertexts.

Affine maps. Tile ``(i, j)`` of the map (output ciphertext ``i``, input ciphertext ``j``) has
generalised diagonals ``d_k`` (``-P < k < P``, zero where a row would read outside its block):
``y_i = sum_j sum_k d_{ijk} * rot(x_j, k)``, so no product reads another block. With the step's
giant step ``B`` and ``k = g B + r`` (centred ``r``, :mod:`he_backend.eval.rotations`),

    y_i = sum_g rot( sum_j sum_r rot(d_{ijk}, -g B) * rot(x_j, r), g B ),

needs the rotations of each ``x_j`` by its distinct residues ``r`` (shared by all outputs) and
one Horner chain over the distinct ``g`` per output; every rotation is composed of the plan's
Galois key steps. The giant steps are cut into runs whose sums two processes can make apart
(:meth:`Runner.partial`). All products of a map land on one scale and one rescale finishes it, exactly
at the step's target ``(level, scale)``. Diagonals come from the sparse weights
(:mod:`he_backend.lowering`) and are only built when a plaintext is first encoded.

Periodic maps. With one sample per ciphertext, a map with an output ``period`` ``M`` takes
its diagonals modulo the periods of its inputs and finishes with a fold
(:mod:`he_backend.eval.cyclic`): its output repeats every ``M`` slots. The fold's rotations
come before the rescale: after it, at the output's scale, each key switch's noise cost about 9
bits on the digits ResNet at a 32-bit scale. Polynomials keep their input's period (per-element
coefficients are laid out with it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
from numpy.polynomial import chebyshev as C

from polyact.approx.schedule import PolyPlan, plan_polynomial
from polyact.ir.graph import INPUT

from .cyclic import cyclic_diagonals, cyclic_offsets, fold_steps, fold_width
from .diagonals import TileOffsets, tile_diagonals, tile_offsets
from .rotations import KeySet, MapShape, giant_runs, split_offsets


def slot_vector(values: np.ndarray, positions: np.ndarray, block: int, index: int) -> np.ndarray:
    """Block ``index`` of the slots of a per-element vector placed at ``positions``."""
    low = index * block
    inside = (positions >= low) & (positions < low + block)
    out = np.zeros(block)
    out[positions[inside] - low] = np.broadcast_to(values, positions.shape)[inside]
    return out


def ciphertext_count(positions: np.ndarray, block: int) -> int:
    """Ciphertexts a value with these slot positions spans."""
    return max(1, -(-(int(positions.max()) + 1) // block)) if positions.size else 1


@dataclass
class AffineStep:
    """``y = sum_i W_i x_i + b`` (folded; sparse ``W_i`` on flattened tensors), output
    ``length`` values at slot ``positions`` and ``(level, scale)``, giant step ``baby``;
    ``source_positions`` are the slots of the inputs and ``source_periods`` their periods (set
    by the plan). ``period`` ``M > 0``: a periodic map whose output repeats every ``M`` slots
    (module docstring); ``0``: the tiled diagonal method."""

    name: str
    sources: list[str]
    weights: list[sp.csr_matrix]
    bias: np.ndarray
    length: int
    positions: np.ndarray
    level: int = 0
    scale: float = 0.0
    identity: bool = False
    baby: int = 1
    period: int = 0
    source_positions: list[np.ndarray] = field(default_factory=list, repr=False)
    source_periods: list[int] = field(default_factory=list, repr=False)
    tiles: list[TileOffsets] = field(default_factory=list, repr=False)

    def prepare(self, block: int) -> None:
        """Diagonal offsets of every tile (no diagonal values yet)."""
        if self.period:
            self.tiles = [{(0, 0): cyclic_offsets(w, p, self.positions, t, self.period)}
                          for w, p, t in zip(self.weights, self.source_positions, self.source_periods)]
        else:
            self.tiles = [tile_offsets(w, p, self.positions, block) for w, p in zip(self.weights, self.source_positions)]

    def diagonals(self, source: int, block: int) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
        """Per tile, offsets and the diagonals' table (rows of ``block`` slots, or of one fold
        width for a periodic map)."""
        w, p = self.weights[source], self.source_positions[source]
        if self.period:
            return {(0, 0): cyclic_diagonals(w, p, self.positions, self.source_periods[source], self.period,
                                             self.fold_width)}
        return tile_diagonals(w, p, self.positions, block)

    @property
    def fold_width(self) -> int:
        return fold_width(self.period, self.source_periods)

    @property
    def folds(self) -> tuple[int, ...]:
        """The fold's rotations after the sum (none for the tiled diagonal method)."""
        return fold_steps(self.period, self.fold_width) if self.period else ()

    @property
    def offsets(self) -> list[int]:
        return sorted({int(k) for tiles in self.tiles for offsets in tiles.values() for k in offsets})

    @property
    def diagonal_count(self) -> int:
        """Plaintext products per evaluation (one per non-zero tile diagonal)."""
        return sum(offsets.size for tiles in self.tiles for offsets in tiles.values())

    @property
    def shape(self) -> MapShape:
        """The offsets the rotation schedule depends on."""
        return MapShape.of(self.tiles, self.folds)

    def giant_runs(self) -> dict[int, list[list[int]]]:
        """Per output ciphertext, its distinct giant steps cut into runs (descending each)."""
        groups: dict[int, list[np.ndarray]] = {}
        for tiles in self.tiles:
            for (i, _), offsets in tiles.items():
                groups.setdefault(i, []).append(split_offsets(offsets, self.baby)[0])
        return {i: giant_runs(np.concatenate(g).tolist()) for i, g in sorted(groups.items())}

    def rotations(self, keys: KeySet) -> int:
        """Key switches per evaluation with the giant step ``baby`` and these keys."""
        return 0 if self.identity else self.shape.cost(self.baby, keys)


@dataclass
class PolyStep:
    """A polynomial activation on ``length`` values: ``kind`` is ``"series"`` (one Chebyshev
    series, possibly a composition of ``stages`` with a final ``product``) or ``"square"``
    (``u^2``; its shift and scale live in the neighbouring affine maps)."""

    name: str
    source: str
    length: int
    kind: str
    stages: list[np.ndarray]
    product: str | None = None
    level: int = 0
    scale: float = 0.0
    plans: list[PolyPlan] = field(default_factory=list, repr=False)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    period: int = 0  # its input's (set by the plan)

    def prepare(self, scale_bits: float) -> None:
        self.plans = [plan_polynomial(c, scale_bits=scale_bits) for c in self.stages] if self.kind == "series" else []

    @property
    def cost(self) -> int:
        if self.kind == "square":
            return 1
        return sum(p.depth for p in self.plans) + (1 if self.product else 0)


def prepare_steps(steps: list[AffineStep | PolyStep], input_length: int, block: int, slots: int,
                  input_period: int, choose: Callable[[AffineStep], None] | None = None) -> None:
    """Source positions and periods and tile diagonal offsets of every affine step (after
    ``choose`` set its period, when given), and the period of every polynomial's input."""
    positions = {INPUT: np.arange(input_length, dtype=np.int64)}
    periods = {INPUT: input_period}
    for s in steps:
        if isinstance(s, AffineStep):
            s.source_positions = [positions[x] for x in s.sources]
            s.source_periods = [periods[x] or slots for x in s.sources]
            if choose is not None and not s.identity:
                choose(s)
            s.prepare(block)
            periods[s.name] = s.period if not s.identity else periods[s.sources[0]]
        else:
            s.period = periods[s.name] = periods[s.source]
        positions[s.name] = s.positions


def poly_values(step: PolyStep, t: np.ndarray) -> np.ndarray:
    """A polynomial step on plaintext inputs ``t`` of shape ``(n, length)`` (float64)."""
    if step.kind == "square":
        return t * t
    v = t
    for coef in step.stages:
        v = C.chebval(v, coef) if coef.ndim == 1 else np.stack(
            [C.chebval(v[:, j], coef[:, j]) for j in range(v.shape[1])], axis=1)
    return v * t if step.product else v
