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
giant step ``B`` and ``k = g B + r`` (centred ``r``, :mod:`he_backend.lowering.rotations`),

    y_i = sum_g rot( sum_j sum_r rot(d_{ijk}, -g B) * rot(x_j, r), g B ),

needs the rotations of each ``x_j`` by its distinct residues ``r`` (shared by all outputs) and
one Horner chain over the distinct ``g`` per output; every rotation is composed of the plan's
Galois key steps. The giant steps are cut into runs whose sums two processes can make apart
(:meth:`Runner.partial`). All products of a map land on one scale and one rescale finishes it, exactly
at the step's target ``(level, scale)``. Diagonals come from the sparse weights
(:mod:`he_backend.lowering`) and are only built when a plaintext is first encoded.

Periodic maps. With one sample per ciphertext, a map with an output ``period`` ``M`` takes
its diagonals modulo the periods of its inputs and finishes with a fold
(:mod:`he_backend.lowering.cyclic`): its output repeats every ``M`` slots. The fold's rotations
come before the rescale: after it, at the output's scale, each key switch's noise cost about 9
bits on the digits ResNet at a 32-bit scale. Polynomials keep their input's period (per-element
coefficients are laid out with it).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import scipy.sparse as sp
import tenseal.sealapi as sa

from .ckks import Engine
from .lowering import KeySet, MapShape, TileOffsets, baby_chain, giant_runs, split_offsets, tile_diagonals, tile_offsets
from .lowering.cyclic import cyclic_diagonals, cyclic_offsets, fold_steps, fold_width, periodic
from .lowering.rotations import GIANT_RUNS
from .polyeval import PolyEvaluator
from polyact.approx.schedule import PolyPlan, plan_polynomial


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


class PlaintextCache:
    """Encoded weights and slot-wise polynomial plans, kept up to ``limit_bytes``. They depend
    on the parameters, not on the keys, so the servers of many sessions of one plan share one
    (thread-safe) cache."""

    def __init__(self, limit_bytes: int = 2 << 30) -> None:
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self._items: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], Any], size: int = 0) -> Any:
        """The cached value of ``key``, else ``make()`` (kept if it fits)."""
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = make()
        with self._lock:
            if key not in self._items and self.bytes + size <= self.limit_bytes:
                self._items[key] = value
                self.bytes += size
        return value


Values = dict[str, list[sa.Ciphertext]]  # every value: its ciphertexts


class Runner:
    """Executes affine and polynomial steps with one :class:`Engine` (server side); with a
    ``partner`` process, every affine map with several giant-step runs is shared with it
    (:mod:`he_backend.workers`)."""

    def __init__(self, engine: Engine, block: int, cache: PlaintextCache | None = None, partner: Any = None) -> None:
        self.partner = partner  # a he_backend.workers.Partner computing giant-step runs 1.. of every map
        self.engine = engine
        self.block = block
        self.cache = cache if cache is not None else PlaintextCache()
        self.poly = PolyEvaluator(engine)

    def _slots(self, values: np.ndarray) -> np.ndarray:
        """A block's (or a period's) vector repeated over the ciphertext."""
        return periodic(values, self.engine.slots)

    def affine(self, step: AffineStep, values: Values) -> list[sa.Ciphertext]:
        if step.identity:
            return values[step.sources[0]]
        if self.partner is None or all(len(runs) < 2 for runs in step.giant_runs().values()):  # nothing to share
            return self.combine(step, self.partial(step, values, range(GIANT_RUNS)))
        self.partner.start(step, values)
        mine = self.partial(step, values, [0])
        theirs = self.partner.result(self.engine.context)
        return self.combine(step, {i: mine.get(i, []) + theirs.get(i, []) for i in mine.keys() | theirs.keys()})

    def partial(self, step: AffineStep, values: Values, runs: Iterable[int]) -> dict[int, list[sa.Ciphertext]]:
        """Per output ciphertext, the sums of the giant-step runs ``runs`` (not yet rescaled):
        all baby rotations, then the products and the Horner chain of each of these runs."""
        e = self.engine
        runs = set(runs)
        pre = step.level + 1
        target = step.scale * e.prime(pre)
        giants = step.giant_runs()
        run_of = {(i, g): n for i, chains in giants.items() for n, chain in enumerate(chains) for g in chain}
        sums: dict[int, dict[int, sa.Ciphertext]] = {}  # output ciphertext -> giant step -> sum of terms
        for s, source in enumerate(step.sources):
            tables: dict = {}

            def plaintext(i: int, j: int, k: int, g: int, x_scale: float, s: int = s, tables: dict = tables) -> sa.Plaintext:
                """Diagonal ``k`` of tile ``(i, j)`` rotated by ``-g B``, encoded (cached)."""
                def make() -> sa.Plaintext:
                    if not tables:
                        tables.update(step.diagonals(s, self.block))
                    offsets, table = tables[(i, j)]
                    values = table[int(np.searchsorted(offsets, k))].toarray().ravel()
                    return e.encode(np.roll(self._slots(values), g * step.baby), target / x_scale, pre)
                return self.cache.get((step.name, s, i, j, k, x_scale, pre), make,
                                      size=8 * e.params.poly_modulus_degree * pre)  # bytes of a plaintext at level pre

            for j, ct in enumerate(values[source]):
                x = e.mod_switch(ct, pre)
                terms: dict[int, list[tuple[int, int, int]]] = {}  # residue -> (output ct, offset, giant step)
                for (i, tile_j), offsets in step.tiles[s].items():
                    if tile_j == j:
                        g, r = split_offsets(offsets, step.baby)
                        for k, gk, rk in zip(offsets.tolist(), g.tolist(), r.tolist()):
                            terms.setdefault(rk, []).append((i, k, gk))
                rotated = {0: x}
                for r, origin in baby_chain(terms, e.keys):  # the whole chain: the same rotations for any runs
                    if r:
                        rotated = {r: e.rotate(rotated[origin], r - origin), 0: x}  # x and the latest only
                    for i, k, g in terms[r]:
                        if run_of[(i, g)] in runs:
                            term, mine = e.mul_plaintext(rotated[r], plaintext(i, j, k, g, x.scale)), sums.setdefault(i, {})
                            mine[g] = term if g not in mine else e.add(mine[g], term)  # summed at once: bounded memory
        return {i: [self._horner(sums[i], chain, step.baby) for n, chain in enumerate(chains) if n in runs]
                for i, chains in giants.items()}

    def combine(self, step: AffineStep, partials: dict[int, list[sa.Ciphertext]]) -> list[sa.Ciphertext]:
        """Output ciphertexts from the sums of all giant-step runs: added, biased, rescaled."""
        e = self.engine
        out = []
        for i in range(ciphertext_count(step.positions, self.block)):
            if not partials.get(i):
                raise ValueError(f"{step.name}: output ciphertext {i} depends on no input (an all-zero weight block); "
                                 "the server cannot create a ciphertext without one")
            total = e.sum_terms(partials[i])
            for amount in step.folds:  # before the rescale: a key switch's noise is then 2^scale times smaller
                total = e.add(total, e.rotate(total, amount))
            bias = slot_vector(step.bias, step.positions, step.period or self.block, i)
            if np.any(bias):
                total = e.add_plain(total, self._slots(bias))
            out.append(e.rescale(total))
        return out

    def _horner(self, sums: dict[int, sa.Ciphertext], giants: list[int], baby: int) -> sa.Ciphertext:
        """``sum_g rot(sums[g], g B)`` over one descending run of giant steps ``g``."""
        e = self.engine
        total = sums[giants[0]]
        for high, low in zip(giants, giants[1:]):
            total = e.add(e.rotate(total, (high - low) * baby), sums[low])
        return e.rotate(total, giants[-1] * baby) if giants[-1] else total

    def polynomial(self, step: PolyStep, values: Values) -> list[sa.Ciphertext]:
        return [self._polynomial(step, x, i) for i, x in enumerate(values[step.source])]

    def _polynomial(self, step: PolyStep, x: sa.Ciphertext, index: int) -> sa.Ciphertext:
        e = self.engine
        if step.kind == "square":
            return e.rescale(e.mul(x, x))
        level = e.level(x) - sum(p.depth for p in step.plans)
        s = x
        for plan in step.plans:
            stage_level = e.level(s) - plan.depth
            is_last = plan is step.plans[-1]
            if is_last and step.product:
                inner_scale = step.scale * e.prime(step.level + 1) / x.scale
                s = self.poly.evaluate(self._slot_plan(plan, step, index), s, stage_level, inner_scale)
                return e.rescale(e.mul(s, x))
            s = self.poly.evaluate(self._slot_plan(plan, step, index), s, stage_level if not is_last else step.level,
                                   step.scale if is_last else e.params.scale)
        assert e.level(s) == level == step.level
        return s

    def _slot_plan(self, plan: PolyPlan, step: PolyStep, index: int) -> PolyPlan:
        """Per-element coefficients (a matrix) become the slot vectors of ciphertext ``index``."""
        if plan.coefficients.ndim == 1:
            return plan
        return self.cache.get(("plan", id(plan), index), lambda: plan_polynomial(
            np.stack([self._slots(slot_vector(c, step.positions, step.period or self.block, index))
                      for c in plan.coefficients]),
            baby=plan.baby, scale_bits=self.engine.params.scale_bits))
