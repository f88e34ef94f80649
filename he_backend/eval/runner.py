"""The server's executor: runs affine and polynomial steps (:mod:`he_backend.eval.steps`) on
ciphertexts with one engine, with the encoded weights in a shared cache."""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

import numpy as np
import tenseal.sealapi as sa

from polyact.approx.schedule import PolyPlan, plan_polynomial

from .ckks import Engine
from .cyclic import periodic
from .polyeval import PolyEvaluator
from .rotations import GIANT_RUNS, baby_chain, split_offsets
from .steps import AffineStep, PolyStep, ciphertext_count, slot_vector


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
    (:mod:`he_backend.protocol.workers`)."""

    def __init__(self, engine: Engine, block: int, cache: PlaintextCache | None = None, partner: Any = None) -> None:
        self.partner = partner  # a he_backend.protocol.workers.Partner computing giant-step runs 1.. of every map
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
