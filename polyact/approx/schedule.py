"""The depth-optimal evaluation schedule of a Chebyshev series, and its float64 twin.

A series ``p(t) = sum_i c_i T_i(t)`` (``t`` in [-1, 1], every slot in parallel; ``c_i`` may be
a vector of per-slot coefficients) is split recursively at powers of two with

    T_{g+j} = 2 T_g T_j - T_{g-j}   =>   p = low + T_g * high,   deg(low), deg(high) < g,

down to *leaves* ``sum_{i<k} c_i T_i``, which share the baby steps ``T_1 .. T_{k-1}``
(baby-step giant-step / Paterson-Stockmeyer in the Chebyshev basis).

Depth. ``T_i`` costs ``ceil(log2 i)`` levels and a leaf one more (its constant products). A
polynomial of degree ``< 2^m`` gets a budget of ``m`` levels; a split gives its ``high`` part
``m - 1`` and its ``low`` part ``m``. Only parts that are short of budget split further, so the
whole evaluation consumes exactly ``ceil(log2(d + 1))`` levels, the lower bound, while using
close to the Paterson-Stockmeyer number of ciphertext products. The baby-step size ``k`` is
chosen to minimise those products.

The schedule is what the CKKS executor (:mod:`he_backend.eval.polyeval`) runs; the twin
(:func:`evaluate_twin`) runs the same tree in numpy, with levels and an estimate of the CKKS
error. Both read the plan made here, so the depth and product counts reported before encryption
are the ones encryption spends.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

NEGLIGIBLE = 1e-14  # coefficients below this fraction of the largest are dropped (as Lattigo does)


def basis_depth(i: int) -> int:
    """Levels consumed computing ``T_i`` from ``T_1``: ``ceil(log2 i)``."""
    return (i - 1).bit_length() if i > 1 else 0


def recurrence(i: int) -> tuple[int, int, int]:
    """``T_i = 2 T_a T_b - T_c`` with ``a`` the largest power of two below ``i``: depth-optimal."""
    a = 1 << (basis_depth(i) - 1)
    b = i - a
    return a, b, a - b


def _is_zero(c: np.ndarray) -> bool:
    return not np.any(c)


@dataclass
class Leaf:
    """``constant + sum_i terms[i] T_i``."""

    terms: dict[int, np.ndarray]
    constant: np.ndarray

    @property
    def depth(self) -> int:
        return max((basis_depth(i) for i in self.terms), default=-1) + 1

    @property
    def is_constant(self) -> bool:
        return not self.terms


@dataclass
class Split:
    """``low + T_g * high``."""

    g: int
    low: Union["Leaf", "Split", None]
    high: Union["Leaf", "Split"]


Node = Union[Leaf, Split]


def chebyshev_divide(coef: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """``low, high`` with ``p = low + T_g high`` for ``deg p < 2g`` (coefficients on axis 0)."""
    low = coef[:g].copy()
    high = np.zeros((coef.shape[0] - g,) + coef.shape[1:])
    high[0] = coef[g]
    for j in range(1, coef.shape[0] - g):
        high[j] = 2.0 * coef[g + j]
        low[g - j] -= coef[g + j]
    return low, high


def _degree(coef: np.ndarray) -> int:
    nonzero = [i for i in range(coef.shape[0]) if not _is_zero(coef[i])]
    return max(nonzero) if nonzero else -1


def _build(coef: np.ndarray, budget: int, baby: int) -> Node | None:
    degree = _degree(coef)
    if degree < 0:
        return None
    terms = {i: coef[i] for i in range(1, degree + 1) if not _is_zero(coef[i])}
    leaf = Leaf(terms, coef[0])
    if degree == 0 or (degree < baby and leaf.depth <= budget):
        return leaf
    g = 1 << (degree.bit_length() - 1)
    low, high = chebyshev_divide(coef[: degree + 1], g)
    return Split(g, _build(low, budget, baby), _build(high, budget - 1, baby))


@dataclass
class PolyPlan:
    """The evaluation schedule of one series: tree, baby-step size, levels and operation counts."""

    root: Node
    degree: int
    baby: int
    depth: int
    basis: list[int]
    ct_ct_mults: int
    pt_mults: int
    coefficients: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {"degree": self.degree, "depth": self.depth, "baby_steps": self.baby,
                "ct_ct_mults": self.ct_ct_mults, "pt_mults": self.pt_mults}


def _walk(node: Node | None, basis: set[int], counts: dict[str, int]) -> int:
    """Collect the basis indices a tree needs and count its products; returns its depth."""
    if node is None:
        return 0
    if isinstance(node, Leaf):
        basis.update(node.terms)
        counts["pt"] += len(node.terms)
        return node.depth
    basis.add(node.g)
    low = _walk(node.low, basis, counts)
    if isinstance(node.high, Leaf) and node.high.is_constant:
        counts["pt"] += 1
        high = 0
    else:
        counts["ct"] += 1
        high = _walk(node.high, basis, counts)
    return max(low, max(high, basis_depth(node.g)) + 1)


def _closure(indices: set[int]) -> list[int]:
    """All ``T_i`` the recurrence needs to reach ``indices`` (``T_0 = 1`` excluded)."""
    needed: set[int] = set()
    stack = [i for i in indices if i >= 1]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        if i > 1:
            a, b, c = recurrence(i)
            stack.extend(j for j in (a, b, c) if j >= 1)
    return sorted(needed)


def prune(coef: np.ndarray, scale_bits: float = 40.0) -> np.ndarray:
    """Zero the coefficients below ``NEGLIGIBLE`` times the largest (per slot), and those below
    ``2^-scale_bits``, which encode to zero at the CKKS scale and are under its noise anyway."""
    coef = np.array(coef, dtype=np.float64)
    scale = np.abs(coef).max(axis=0, keepdims=True)
    tiny = np.maximum(NEGLIGIBLE * np.maximum(scale, 1e-300), 2.0 ** (-scale_bits))
    coef[np.abs(coef) <= tiny] = 0.0
    return coef


def plan_polynomial(coef: np.ndarray, baby: int | None = None, scale_bits: float = 40.0) -> PolyPlan:
    """Schedule ``sum_i coef[i] T_i`` at the optimal depth ``ceil(log2(degree + 1))``.

    ``coef`` has shape ``(d + 1,)`` or ``(d + 1, slots)`` (per-slot coefficients). ``baby``
    fixes the baby-step size (a power of two); by default every size is tried and the one with
    the fewest ciphertext products wins (then the fewest plaintext products). ``scale_bits`` is
    the CKKS scale the plan will run at (coefficients below ``2^-scale_bits`` are dropped).
    """
    coef = prune(coef, scale_bits)
    degree = _degree(coef)
    if degree < 1:
        raise ValueError("a constant polynomial needs no ciphertext operations; fold it into the next layer")
    budget = degree.bit_length()
    options = [baby] if baby else [1 << j for j in range(1, budget + 1)]
    best: PolyPlan | None = None
    for k in options:
        root = _build(coef, budget, k)
        assert root is not None
        indices: set[int] = set()
        counts = {"ct": 0, "pt": 0}
        depth = _walk(root, indices, counts)
        basis = _closure(indices)
        ct = counts["ct"] + sum(1 for i in basis if i > 1)
        pt = counts["pt"] + sum(1 for i in basis if i > 1 and recurrence(i)[2] > 0)
        plan = PolyPlan(root, degree, k, depth, basis, ct, pt, coef)
        if best is None or (plan.ct_ct_mults, plan.pt_mults) < (best.ct_ct_mults, best.pt_mults):
            best = plan
    assert best is not None and best.depth == budget
    return best



@dataclass
class TwinResult:
    """What the twin computed: values, levels consumed, products, and an error estimate."""

    values: np.ndarray
    levels: int
    ct_ct_mults: int
    pt_mults: int
    expected_error: float


def evaluate_twin(plan: PolyPlan, t: np.ndarray, scale_bits: float = 40.0, n: int = 16384) -> TwinResult:
    """Run ``plan``'s schedule in numpy on ``t`` (one value per slot).

    Levels are tracked as the CKKS executor tracks them, so ``levels`` is what encryption will
    consume. ``expected_error`` is an order-of-magnitude estimate of the CKKS error (noise
    model: a fresh symmetric encryption carries ``sigma_0 = 2 sqrt(N) / scale`` per slot, each
    rescale adds ``0.2 N / scale``; errors propagate through products to first order, add in
    quadrature where independent and linearly where they share baby steps; the maximum over the
    slots is about 4.5 standard deviations).
    """
    fresh, rescale = 2.0 * np.sqrt(n) / 2.0**scale_bits, 0.2 * n / 2.0**scale_bits
    t = np.asarray(t, dtype=np.float64)
    rms = lambda v: float(np.sqrt(np.mean(np.square(v))))  # noqa: E731
    basis: dict[int, tuple[np.ndarray, int, float]] = {1: (t, 0, fresh)}
    counts = {"ct": 0, "pt": 0}

    def power(i: int) -> tuple[np.ndarray, int, float]:
        if i not in basis:
            a, b, c = recurrence(i)
            (va, la, ea), (vb, lb, eb) = power(a), power(b)
            value = 2.0 * va * vb
            var = 4.0 * ((rms(va) * eb) ** 2 + (rms(vb) * ea) ** 2) + rescale**2
            if c:
                vc, _, ec = power(c)
                value, var = value - vc, var + ec**2
                counts["pt"] += 1
            else:
                value = value - 1.0
            counts["ct"] += 1
            basis[i] = (value, max(la, lb) + 1, float(np.sqrt(var)))
        return basis[i]

    def run(node: Node) -> tuple[np.ndarray, int, float]:
        if isinstance(node, Leaf):
            value = np.broadcast_to(node.constant, t.shape).astype(float)
            level, correlated = 0, 0.0
            for i, c in node.terms.items():
                vi, li, ei = power(i)
                value = value + c * vi
                level, correlated = max(level, li), correlated + rms(c) * ei  # shared baby steps
                counts["pt"] += 1
            return value, (level + 1 if node.terms else 0), float(np.hypot(correlated, rescale))
        vg, lg, eg = power(node.g)
        if isinstance(node.high, Leaf) and node.high.is_constant:
            vh, lh, eh = node.high.constant, 0, 0.0
            counts["pt"] += 1
        else:
            vh, lh, eh = run(node.high)
            counts["ct"] += 1
        product = vg * vh
        var = (rms(vg) * eh) ** 2 + (rms(vh) * eg) ** 2 + rescale**2
        level = max(lg, lh) + 1
        if node.low is None:
            return product, level, float(np.sqrt(var))
        vl, ll, el = run(node.low)
        return product + vl, max(level, ll), float(np.sqrt(var) + el)  # correlated through the basis

    values, levels, sigma = run(plan.root)
    return TwinResult(values, levels, counts["ct"], counts["pt"], 4.5 * sigma)
