"""Evaluation of a Chebyshev series's schedule (:mod:`polyact.approx.schedule`) on CKKS
ciphertexts.

Scales. :class:`PolyEvaluator` computes every node directly at a target ``(level, scale)``:
constants are encoded so that the node's single rescale lands exactly on the target, so sums
never need scale fixes.
"""
from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from polyact.approx.schedule import Leaf, Node, PolyPlan, recurrence

from .ckks import Engine


class PowerBasis:
    """``T_i`` of one ciphertext, computed on demand by the depth-optimal recurrence."""

    def __init__(self, engine: Engine, x: sa.Ciphertext) -> None:
        self.engine = engine
        self.cache = {1: x}

    def __getitem__(self, i: int) -> sa.Ciphertext:
        if i not in self.cache:
            e = self.engine
            a, b, c = recurrence(i)
            ta, tb = self[a], self[b]
            product = e.mul(ta, ta) if a == b else e.mul(ta, tb)
            doubled = e.add(product, product)
            if c:
                tc = e.mod_switch(self[c], e.level(doubled))
                result = e.sub(doubled, e.mul_plain(tc, 1.0, doubled.scale / tc.scale))
            else:
                result = e.add_plain(doubled, -1.0)
            self.cache[i] = e.rescale(result)
        return self.cache[i]


class PolyEvaluator:
    """Evaluates a :class:`PolyPlan` on a ciphertext holding ``t`` in [-1, 1] in every slot."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def evaluate(
        self, plan: PolyPlan, x: sa.Ciphertext, level: int | None = None, scale: float | None = None,
        basis: PowerBasis | None = None,
    ) -> sa.Ciphertext:
        """``p(x)`` at exactly ``(level, scale)``: by default ``plan.depth`` levels below ``x``
        and the parameters' scale."""
        e = self.engine
        level = e.level(x) - plan.depth if level is None else level
        if level < 1 or e.level(x) - level < plan.depth:
            raise ValueError(
                f"the polynomial needs {plan.depth} levels but the ciphertext at level {e.level(x)} "
                f"can give {e.level(x) - 1} down to level {max(level, 1)}; choose parameters with more levels"
            )
        out = self._node(plan.root, level, e.params.scale if scale is None else scale, basis or PowerBasis(e, x))
        assert isinstance(out, sa.Ciphertext)
        return out

    def _node(self, node: Node, level: int, scale: float, basis: PowerBasis) -> sa.Ciphertext | np.ndarray:
        e = self.engine
        if isinstance(node, Leaf):
            if node.is_constant:
                return node.constant
            pre = level + 1
            target = scale * e.prime(pre)
            terms = []
            for i, c in node.terms.items():
                ti = e.mod_switch(basis[i], pre)
                if np.any(np.abs(c) * (target / ti.scale) >= 0.5):  # else it encodes to zero
                    terms.append(e.mul_plain(ti, c, target / ti.scale))
            if not terms:
                return node.constant
            total = e.sum_terms(terms)
            if np.any(node.constant):
                total = e.add_plain(total, node.constant)
            return e.rescale(total)
        tg = e.mod_switch(basis[node.g], level + 1)
        inner = scale * e.prime(level + 1) / tg.scale
        if isinstance(node.high, Leaf) and node.high.is_constant:
            product = e.mul_plain(tg, node.high.constant, inner)
        else:
            high = self._node(node.high, level + 1, inner, basis)
            product = e.mul(high, tg)
        result = e.rescale(product)
        if node.low is None:
            return result
        low = self._node(node.low, level, scale, basis)
        if isinstance(low, sa.Ciphertext):
            return e.add(result, low)
        return e.add_plain(result, low)  # a constant low part (never zero: pruned when planning)
