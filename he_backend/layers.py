"""Encrypted layers: affine maps on packed vectors (baby-step giant-step diagonal method) and
polynomial activations.

Layout. Every value (a flattened tensor of ``m <= P`` numbers) lives in *blocks* of ``P`` slots:
block ``b`` holds one sample in slots ``[b P, b P + m)``, zero-padded. One sample per
ciphertext gives the lowest latency; ``slots / P`` samples per ciphertext the best throughput;
the operations are the same.

Affine maps. With ``W`` of shape ``(m, n)`` the generalised diagonals
``d_k[j] = W[j, j + k]`` (``-(m-1) <= k < n``, zero where ``j + k`` leaves ``[0, n)``) give
``y = sum_k d_k * rot(x, k)``; no product ever reads another block, so blocks stay independent.
Writing ``k = g B1 + r`` (``0 <= r < B1``),

    y = sum_g rot( sum_r rot(d_k, -g B1) * rot(x, r), g B1 ),

needs the rotations of ``x`` by ``r`` (stepping by 1) and a Horner chain over ``g`` (stepping
by ``+-B1``): three Galois keys in all. All products of a map land on one scale and one rescale
finishes it, exactly at the step's target ``(level, scale)``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import tenseal.sealapi as sa

from .ckks import Engine
from .polyeval import PolyEvaluator, PolyPlan, plan_polynomial


def diagonals(weight: np.ndarray) -> dict[int, np.ndarray]:
    """Non-zero generalised diagonals ``k -> d_k`` (length ``m``) of an ``(m, n)`` matrix:
    ``d_k[j] = W[j, j + k]`` for ``-(m - 1) <= k < n``."""
    m, n = weight.shape
    out = {}
    for k in range(-(m - 1), n):
        diag = np.diagonal(weight, offset=k)
        if not np.any(diag):
            continue
        d = np.zeros(m)
        start = max(0, -k)
        d[start : start + diag.size] = diag
        out[k] = d
    return out


def rotation_cost(offsets: list[int], baby: int) -> int:
    """Rotations of the BSGS scheme for these diagonal offsets and baby-step size."""
    if not offsets:
        return 0
    remainders = [k % baby for k in offsets]
    giants = [k // baby for k in offsets]
    return max(remainders) + max(max(giants), 0) + max(-min(giants), 0)


@dataclass
class AffineStep:
    """``y = sum_i W_i x_i + b`` (folded), output ``length`` values at ``(level, scale)``."""

    name: str
    sources: list[str]
    weights: list[np.ndarray]
    bias: np.ndarray
    length: int
    level: int = 0
    scale: float = 0.0
    identity: bool = False
    diags: list[dict[int, np.ndarray]] = field(default_factory=list, repr=False)

    def prepare(self) -> None:
        self.diags = [diagonals(w) for w in self.weights]

    @property
    def offsets(self) -> list[int]:
        return sorted({k for d in self.diags for k in d})


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


class Runner:
    """Executes affine and polynomial steps with one :class:`Engine` (server side)."""

    def __init__(self, engine: Engine, block: int, baby: int, cache: PlaintextCache | None = None) -> None:
        self.engine = engine
        self.block = block
        self.blocks = engine.slots // block
        self.baby = baby
        self.cache = cache if cache is not None else PlaintextCache()
        self.poly = PolyEvaluator(engine)

    def _slots(self, values: np.ndarray) -> np.ndarray:
        """A per-element vector repeated in every block (zero padding)."""
        block = np.zeros(self.block)
        block[: len(values)] = values
        return np.tile(block, self.blocks)


    def affine(self, step: AffineStep, values: dict[str, sa.Ciphertext]) -> sa.Ciphertext:
        e = self.engine
        if step.identity:
            return values[step.sources[0]]
        pre = step.level + 1
        target = step.scale * e.prime(pre)
        def products(i: int, diags: dict[int, np.ndarray], keys: list[int], rotated: sa.Ciphertext):
            """Per giant step ``g``, the sum of ``d_k * rot(x, r)`` over this ``r``'s offsets."""
            out: dict[int, sa.Ciphertext] = {}
            for k in keys:
                g = k // self.baby
                pt = self.cache.get((step.name, i, k, rotated.scale, pre), lambda: e.encode(
                    np.roll(self._slots(diags[k]), g * self.baby), target / rotated.scale, pre),
                    size=8 * e.params.poly_modulus_degree * pre)  # bytes of a plaintext at level pre
                term = e.mul_plaintext(rotated, pt)
                out[g] = e.add(out[g], term) if g in out else term
            return out

        parts = []  # the products of each rotation run on a helper thread while the next rotates
        for i, (source, diags) in enumerate(zip(step.sources, step.diags)):
            x = e.mod_switch(values[source], pre)
            by_r: dict[int, list[int]] = {}
            for k in diags:
                by_r.setdefault(k % self.baby, []).append(k)
            rotated = x
            for r in range(max(by_r, default=0) + 1):
                if r:
                    rotated = e.rotate(rotated, 1)
                if r in by_r:
                    parts.append(e.submit(products, i, diags, by_r[r], rotated))
        sums: dict[int, sa.Ciphertext] = {}
        for part in parts:
            for g, term in part.result().items():
                sums[g] = e.add(sums[g], term) if g in sums else term

        def horner(sign: int) -> sa.Ciphertext | None:
            giants = sorted((g for g in sums if g * sign > 0), key=abs)
            if not giants:
                return None
            acc = None
            for g in range(giants[-1], 0, -1) if sign > 0 else range(giants[-1], 0):
                acc = sums[g] if acc is None else (e.add(e.rotate(acc, sign * self.baby), sums[g]) if g in sums
                                                     else e.rotate(acc, sign * self.baby))
            return e.rotate(acc, sign * self.baby)

        negative = e.submit(horner, -1)  # the two giant-step chains are independent
        total = sums.get(0)
        for acc in (horner(1), negative.result()):
            if acc is not None:
                total = acc if total is None else e.add(total, acc)
        if np.any(step.bias):
            total = e.add_plain(total, self._slots(step.bias))
        return e.rescale(total)

    def polynomial(self, step: PolyStep, values: dict[str, sa.Ciphertext]) -> sa.Ciphertext:
        e = self.engine
        x = values[step.source]
        if step.kind == "square":
            return e.rescale(e.mul(x, x))
        level = e.level(x) - sum(p.depth for p in step.plans)
        s = x
        for plan in step.plans:
            stage_level = e.level(s) - plan.depth
            is_last = plan is step.plans[-1]
            if is_last and step.product:
                inner_scale = step.scale * e.prime(step.level + 1) / x.scale
                s = self.poly.evaluate(self._slot_plan(plan), s, stage_level, inner_scale)
                return e.rescale(e.mul(s, x))
            s = self.poly.evaluate(self._slot_plan(plan), s, stage_level if not is_last else step.level,
                                   step.scale if is_last else e.params.scale)
        assert e.level(s) == level == step.level
        return s

    def _slot_plan(self, plan: PolyPlan) -> PolyPlan:
        """Per-element coefficients (a matrix) become slot vectors repeated per block."""
        if plan.coefficients.ndim == 1:
            return plan
        return self.cache.get(("plan", id(plan)), lambda: plan_polynomial(
            np.stack([self._slots(c) for c in plan.coefficients]), baby=plan.baby,
            scale_bits=self.engine.params.scale_bits))
