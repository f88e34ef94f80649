"""The search over levels: per-site options, their measured sensitivities, and a dynamic program
that picks the cheapest combination within a sensitivity budget (OLA's layerwise DP).

Each call site ``s`` has options ``o`` (a method and a degree, or a composite precision) with a
cost ``c_s(o)`` (CKKS levels, or ciphertext products as a latency estimate) and a sensitivity
``d_s(o) >= 0``: how far the network's outputs move when only ``s`` is approximated by ``o``
(measured on data, see :mod:`polyact.tuning.pipeline`). Assuming the sensitivities add up, the
cheapest network within a budget ``B`` solves the multiple-choice knapsack

    min sum_s c_s(o_s)   subject to   sum_s d_s(o_s) <= B,

which :func:`cheapest_within` solves exactly on a grid of ``bins`` steps of ``B / bins``
(each ``d_s`` rounded up, so the grid never admits more than ``B``). :func:`search_budget`
bisects ``B`` (in log scale) against the accuracy actually measured, since the additivity is
only approximate.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Assignment = dict[str, int]  # site -> index of its option


@dataclass(frozen=True)
class Option:
    """One way to approximate a site: ``method`` (``minimax``, ``lsq`` or ``composite``) and
    ``degree`` or composite precision ``alpha``."""

    method: str
    degree: int | None = None
    alpha: float | None = None

    @property
    def label(self) -> str:
        return f"composite a={self.alpha:g}" if self.alpha is not None else f"{self.method} d={self.degree}"

    def convert_kwargs(self) -> dict:
        """The keyword arguments of :func:`polyact.convert` (or an ``overrides`` entry)."""
        if self.alpha is not None:
            return {"alpha": self.alpha}
        return {"method": self.method, "degree": self.degree}


def cheapest_within(cost: Sequence[Sequence[float]], sensitivity: Sequence[Sequence[float]], budget: float,
                    bins: int = 200) -> list[int] | None:
    """Per site the index of its option minimising ``sum cost`` with ``sum sensitivity <= budget``
    (ties: the smaller total sensitivity); ``None`` if no combination fits.

    ``cost[s][o]`` and ``sensitivity[s][o]`` list site ``s``'s options; ``inf`` marks an option
    that is not available. Exact on the grid: O(sites x options x bins)."""
    if budget < 0 or bins < 1:
        raise ValueError(f"need budget >= 0 and bins >= 1, got budget={budget}, bins={bins}")
    unit = budget / bins if budget > 0 else 1.0
    # best[b] = (cost, exact sensitivity, choices) over the sites so far with grid total b
    best: dict[int, tuple[float, float, tuple[int, ...]]] = {0: (0.0, 0.0, ())}
    for site_cost, site_sens in zip(cost, sensitivity):
        nxt: dict[int, tuple[float, float, tuple[int, ...]]] = {}
        for o, (c, d) in enumerate(zip(site_cost, site_sens)):
            if not (math.isfinite(c) and math.isfinite(d)):
                continue
            steps = 0 if d <= 0 else math.ceil(d / unit - 1e-12)
            if budget == 0 and d > 0:
                continue
            for b, (total, sens, picks) in best.items():
                nb = b + steps
                if nb > bins:
                    continue
                entry = (total + c, sens + d, picks + (o,))
                if nb not in nxt or entry[:2] < nxt[nb][:2]:
                    nxt[nb] = entry
        best = nxt
        if not best:
            return None
    return list(min(best.values(), key=lambda e: e[:2])[2])


def search_budget(cost: Sequence[Sequence[float]], sensitivity: Sequence[Sequence[float]],
                  meets: Callable[[list[int]], bool], steps: int = 8, bins: int = 200) -> list[tuple[float, list[int], bool]]:
    """Bisect the budget ``B`` between the least total sensitivity (every site at its most
    accurate option) and the total at the cheapest options, solving :func:`cheapest_within` at
    each ``B`` and asking ``meets(choice)`` (the measured accuracy bar). Returns every
    ``(B, choice, met)`` tried, in order."""
    low = sum(min(s for s in site if math.isfinite(s)) for site in sensitivity)
    cheapest = [min(range(len(c)), key=lambda o: (c[o], sens[o])) for c, sens in zip(cost, sensitivity)]
    high = sum(sens[o] for sens, o in zip(sensitivity, cheapest))
    tried: list[tuple[float, list[int], bool]] = []
    seen: dict[tuple[int, ...], bool] = {}

    def attempt(budget: float) -> bool | None:
        choice = cheapest_within(cost, sensitivity, budget, bins)
        if choice is None:
            return None
        key = tuple(choice)
        if key not in seen:
            seen[key] = meets(choice)
        tried.append((budget, choice, seen[key]))
        return seen[key]

    if attempt(high):  # the cheapest options already meet the bar
        return tried
    lo = max(low, 1e-12)
    if not attempt(lo * (1 + 1e-9)):
        return tried
    hi = max(high, lo * 2)
    for _ in range(steps):  # invariant: lo meets, hi does not
        mid = math.sqrt(lo * hi)
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return tried
