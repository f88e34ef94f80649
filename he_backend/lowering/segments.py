"""Segments of a plan: levels with refresh points, live values, value bounds and the placement
of the refresh points (see :mod:`he_backend.protocol.refresh` for the protocol).

The steps run in list order; a *cut* at position ``p`` refreshes, before ``steps[p]``, every
value produced earlier and used at or after ``p`` (residual skips included): its *live* values.
After a cut those values restart at the top level, so the levels of a segment depend only on
where it starts, and the cheapest placement is a shortest path over positions.

The cost model (:class:`CostModel`) places the cuts and chooses how many levels a segment
has. Seconds per ciphertext: every step's operations at the level it runs at
(plaintext products ``~ N L``, key switching for ciphertext products and rotations
``~ N L (a + b L)``), plus per round a latency, the bytes both ways over a
bandwidth (down: ``2 N L_mask 8`` bytes per live value; up: ``N L_top 8``, seeded) and the
client's decryption and encryption. Placing the cuts is a shortest path over the positions of the
step list (:func:`shortest_cuts`), as Orion places bootstraps: ``O(n^2)`` segments, each checked
and costed in ``O(n)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from polyact.ir.graph import INPUT

from ..eval.params import CkksParams
from ..eval.steps import AffineStep, PolyStep, poly_values
from ..protocol.refresh import Cut, MaskPolicy, mask_level, refresh_bytes

Step = AffineStep | PolyStep
GRID = 257  # points of [-1, 1] on which polynomial outputs are bounded


@dataclass(frozen=True)
class CostModel:
    """Seconds per ciphertext, for placing refresh points and choosing the segment length.
    Operation constants are seconds per ``(N / 8192) * level`` (``key_switch_square``: per
    ``(N / 8192) * level^2``) measured on a 2-core machine with SEAL at N = 8192 to 32768 and
    levels 3 to 20: a plaintext product costs ``pt_mult`` (its encoding, the product and the
    addition into the sum), a key switch (a rotation or a relinearisation) ``key_switch +
    key_switch_square * level`` per unit, since SEAL splits a ciphertext at ``level`` into
    ``level`` parts, each lifted to ``level + 1`` primes. ``round_seconds`` and ``bytes_per_second``
    describe the link between client and server."""

    round_seconds: float = 0.05
    bytes_per_second: float = 12.5e6
    pt_mult: float = 3.3e-4
    key_switch: float = 8.0e-4
    key_switch_square: float = 1.2e-4
    decrypt: float = 2.5e-3
    encrypt: float = 3.5e-3

    def step_seconds(self, n: int, level: int, ct_ct_mults: int, pt_mults: int, rotations: int) -> float:
        """One step's operations on a ciphertext at ``level`` (its input level)."""
        unit = n / 8192 * level
        return unit * (self.pt_mult * pt_mults + (self.key_switch + self.key_switch_square * level)
                       * (ct_ct_mults + rotations))

    def refresh_seconds(self, n: int, live: int, mask_level: int, top: int) -> float:
        """One round for ``live`` ciphertexts: latency, bytes both ways, client work."""
        down, up = refresh_bytes(n, live, mask_level, top)
        client = live * n / 8192 * (self.decrypt * mask_level + self.encrypt * top)
        server = live * n / 8192 * self.pt_mult * (mask_level + top)  # mask and unmask
        return self.round_seconds + (down + up) / self.bytes_per_second + client + server


def shortest_cuts(count: int, edge: Callable[[int, int], float | None]) -> tuple[list[int], float]:
    """Cheapest way from position ``0`` to ``count`` through cut positions: ``edge(c, p)`` is
    the cost of the segment ``[c, p)`` plus the refresh at ``p`` (``p < count``), ``None`` if
    infeasible. Dynamic programming over positions in order (a shortest path in a DAG).
    Returns the cut positions and the total cost; raises ``ValueError`` if no path exists."""
    best: list[float] = [0.0] + [math.inf] * count
    previous = [-1] * (count + 1)
    for p in range(1, count + 1):
        for c in range(p):
            if best[c] == math.inf:
                continue
            cost = edge(c, p)
            if cost is not None and best[c] + cost < best[p]:
                best[p], previous[p] = best[c] + cost, c
    if best[count] == math.inf:
        raise ValueError("no placement of refresh points makes every segment fit")
    cuts, p = [], previous[count]
    while p > 0:
        cuts.append(p)
        p = previous[p]
    return cuts[::-1], best[count]


# ---- server side --------------------------------------------------------------------------
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
    """The cheapest refresh points (a shortest path, see :func:`he_backend.lowering.segments.shortest_cuts`)
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
