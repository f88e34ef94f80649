"""Segments of a plan: levels with refresh points, live values, value bounds and the placement
of the refresh points (see :mod:`he_backend.protocol.refresh` for the protocol and the cost model).

The steps run in list order; a *cut* at position ``p`` refreshes, before ``steps[p]``, every
value produced earlier and used at or after ``p`` (residual skips included): its *live* values.
After a cut those values restart at the top level, so the levels of a segment depend only on
where it starts, and the cheapest placement is a shortest path over positions.
"""
from __future__ import annotations

import math
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from polyact.ir.graph import INPUT

from .eval.steps import AffineStep, PolyStep
from .eval.steps import poly_values
from .eval.params import CkksParams
from .protocol.refresh import CostModel, Cut, MaskPolicy, mask_level, shortest_cuts

Step = AffineStep | PolyStep
GRID = 257  # points of [-1, 1] on which polynomial outputs are bounded


def sources_of(step: Step) -> list[str]:
    return list(step.sources) if isinstance(step, AffineStep) else [step.source]


def step_levels(steps: Sequence[Step], top: int, entry: Collection[str], start: int = 0, stop: int | None = None,
                resets: Mapping[int, Collection[str]] | None = None) -> dict[str, int]:
    """Output level of ``steps[start:stop]`` when the values ``entry`` sit at ``top``; at each
    position in ``resets`` (a cut) the listed values go back to ``top``. An affine map costs one
    level (none for an identity), a polynomial its depth."""
    level = {name: top for name in entry}  # current level of every value
    out: dict[str, int] = {}  # level each step produced its value at
    resets = resets or {}
    for i in range(start, len(steps) if stop is None else stop):
        for name in resets.get(i, ()):
            level[name] = top
        s = steps[i]
        if isinstance(s, AffineStep):
            level[s.name] = min(level[src] for src in s.sources) - (0 if s.identity else 1)
        else:
            level[s.name] = level[s.source] - s.cost
        out[s.name] = level[s.name]
    return {**level, **out}


def live_sets(steps: Sequence[Step], output: str) -> list[set[str]]:
    """``live[p]`` (``0 <= p <= len(steps)``): names produced before ``steps[p]`` and used at or
    after it, or the output."""
    last_use: dict[str, int] = {output: len(steps)}
    for i, s in enumerate(steps):
        for src in sources_of(s):
            last_use[src] = max(last_use.get(src, -1), i)
    defined = {INPUT: -1, **{s.name: i for i, s in enumerate(steps)}}
    return [{name for name, d in defined.items() if d < p <= last_use.get(name, -1)} for p in range(len(steps) + 1)]


def roots(steps: Sequence[Step]) -> dict[str, str]:
    """Each name's ciphertext: identity steps alias their source."""
    root = {INPUT: INPUT}
    for s in steps:
        root[s.name] = root[s.sources[0]] if isinstance(s, AffineStep) and s.identity else s.name
    return root


def value_bounds(steps: Sequence[Step], square_shift: Mapping[str, float], margin: float) -> dict[str, float]:
    """``|v| <= B`` for values a cut may refresh, from the calibrated ranges: a polynomial's
    input ``t`` is ``[-1, 1]`` on its interval, so inputs of series get ``margin``, outputs of
    series ``margin * max |p(t)|`` over ``[-1, 1]``, outputs of squares ``(margin + |shift|)^2``.
    Inputs of squares sit at a special scale and are never cut; the network input and the
    output have no bound (no cut needs them: the input is fresh, the output is last)."""
    by_name = {s.name: s for s in steps}
    bounds: dict[str, float] = {}
    grid = np.linspace(-1.0, 1.0, GRID)
    for s in steps:
        if not isinstance(s, PolyStep):
            continue
        if s.kind == "square":
            bounds[s.name] = (margin + abs(square_shift[s.name])) ** 2
            continue
        bounds[s.name] = margin * max(float(np.abs(poly_values(s, np.repeat(grid[:, None], s.length, axis=1))).max()),
                                      1e-12)
        source = by_name.get(s.source)
        if isinstance(source, AffineStep) and not source.identity:
            bounds[s.source] = margin
    return bounds


def candidate_cut(live: set[str], position: int, root: Mapping[str, str],
                  bounds: Mapping[str, float], params: CkksParams, policy: MaskPolicy) -> Cut | None:
    """The cut at ``position`` if every live value has a bound and the masked values fit a level."""
    names = sorted({root[n] for n in live})
    if not names or any(n not in bounds for n in names):
        return None
    level = mask_level(params, max(bounds[n] for n in names), policy.sigma)
    return None if level is None else Cut(position, tuple(names), tuple(bounds[n] for n in names), level)


def place_cuts(steps: Sequence[Step], output: str, params: CkksParams, budget: int, bounds: Mapping[str, float],
               policy: MaskPolicy, cost: CostModel, operations: Callable[[Step], tuple[int, int, int]],
               ciphertexts: Callable[[str], int]) -> tuple[list[Cut], float]:
    """The cheapest refresh points (a shortest path, see :func:`he_backend.protocol.refresh.shortest_cuts`)
    such that every segment stays within ``budget`` levels below the top and every cut's live
    values are at or above its mask level, and their estimated seconds per ciphertext.
    ``operations(step)`` gives (ciphertext products, plaintext products, rotations) per
    evaluation of the step; ``ciphertexts(name)`` the ciphertexts a value spans (each one is
    masked and refreshed). Raises ``ValueError`` when no placement fits."""
    n, top, ring = len(steps), params.depth + 1, params.poly_modulus_degree
    floor = top - budget
    live, root = live_sets(steps, output), roots(steps)
    cuts = {p: candidate_cut(live[p], p, root, bounds, params, policy) for p in range(1, n)}
    ops = [operations(s) for s in steps]

    def edge(c: int, p: int) -> float | None:
        if c > 0 and cuts[c] is None or p < n and cuts[p] is None:
            return None
        level = step_levels(steps, top, live[c] if c else {INPUT}, c, p)
        if any(level[s.name] < floor for s in steps[c:p]):
            return None
        seconds = 0.0
        for s, (ct, pt, rot) in zip(steps[c:p], ops[c:p]):
            entry = min(level[src] for src in sources_of(s))
            seconds += cost.step_seconds(ring, math.ceil((entry + level[s.name]) / 2), ct, pt, rot)
        if p < n:
            cut = cuts[p]
            if any(level[name] < max(floor, cut.mask_level) for name in live[p]):
                return None
            seconds += cost.refresh_seconds(ring, sum(ciphertexts(name) for name in cut.names), cut.mask_level, top)
        return seconds

    try:
        positions, seconds = shortest_cuts(n, edge)
    except ValueError:
        raise ValueError(
            f"no placement of refresh points fits {budget} levels per segment: a single step needs more "
            f"levels than that, or the only places to cut hold values whose {policy.sigma}-bit masks do not "
            "fit the modulus; raise max_levels, lower the polynomial degrees or lower sigma") from None
    return [cuts[p] for p in positions], seconds


def reset_names(steps: Sequence[Step], output: str, cuts: Sequence[Cut]) -> dict[int, set[str]]:
    """Per cut position, every name (aliases included) whose value the cut refreshes."""
    live = live_sets(steps, output)
    return {c.position: live[c.position] for c in cuts}
