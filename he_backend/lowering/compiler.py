"""Compile a PANN into an encrypted-inference plan.

``compile(pann, input_shape)`` lowers the PANN to affine maps and polynomials
(:func:`polyact.ir.lower.lower`), folds everything foldable into the affine maps (each
polynomial's input map ``t = (2x - a - b) / (b - a)``, the shift and scale of degree-2
activations, batch normalisation), folds the interval maps between composite stages into the
stage coefficients, places every tensor in the slots (:mod:`he_backend.lowering`: flat or
strided layouts, several ciphertexts per tensor when it does not fit one), chooses CKKS
parameters for the network's depth, chooses the Galois keys and each affine map's rotation
schedule (with sample packing, each map's output period: :mod:`he_backend.eval.cyclic`),
assigns every step its exact output level and scale, and counts the operations, all
before anything is encrypted. Weights stay sparse throughout.

The plan is what the server runs; ``plan.client()`` makes the matching client (keys, packing).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
from torch import nn

from polyact.approx.polynomials import ChebPoly, CompositePoly
from polyact.ir.graph import INPUT, AffineNode, PolyGraph, PolyNode, is_identity
from polyact.ir.lower import lower

from ..eval.ckks import Engine
from ..eval.params import MAX_LOG_Q, CkksParams, ParameterError, choose_params, max_depth, params_for
from ..eval.rotations import KeySet
from ..eval.steps import AffineStep, PolyStep, ciphertext_count, prepare_steps
from ..protocol.plan import Plan
from ..protocol.plan_layout import input_period
from ..protocol.refresh import Cut, MaskPolicy
from .key_choice import best_baby, choose_keys
from .layout import Layout, choose_layout, count_diagonals, row_aligned_input
from .segments import CostModel, place_cuts, reset_names, step_levels, value_bounds

PACKINGS = ("sample", "batch")
KEY_MEMORY_BUDGET = 2 << 30  # default bytes of Galois keys for one plan (about 9 keys at N = 32768, 20 primes)
MAX_ROTATION_KEYS = 8  # a key set larger than this saved little on the digits networks and cost memory
ROTATION_COST = 14  # plaintext products (with their additions) per key switch, measured at N = 16384


def _input_map(polys: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per element ``alpha, beta`` with ``t = alpha x + beta`` mapping the first interval to [-1, 1]."""
    bounds = np.array([p.interval for p in polys], dtype=np.float64)
    alpha = 2.0 / (bounds[:, 1] - bounds[:, 0])
    return alpha, -(bounds[:, 1] + bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0])


def _stage_matrix(polys: Sequence[ChebPoly]) -> np.ndarray:
    """Coefficients of one stage: ``(d+1,)`` if shared, else ``(d+1, elements)``."""
    if len(polys) == 1:
        return np.array(polys[0].coef, dtype=np.float64)
    return np.stack([p.coef for p in polys], axis=1)


def _square_parts(polys: Sequence[ChebPoly]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``p(t) = A (t + B)^2 + C`` per element for degree-2 series ``c0 + c1 T1 + c2 T2``."""
    c = np.array([p.coef for p in polys], dtype=np.float64)
    c0, c1, c2 = c[:, 0], c[:, 1], c[:, 2]
    return 2.0 * c2, c1 / (4.0 * c2), c0 - c2 - c1**2 / (8.0 * c2)


def _poly_step(node: PolyNode) -> tuple[PolyStep, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The step for a polynomial node, its input map (alpha, beta) and output map (A, C)."""
    polys = node.slot_polynomials()
    length = int(np.prod(node.shape))
    alpha, beta = _input_map(polys)
    out_scale, out_shift = np.ones(1), np.zeros(1)
    if node.fold_square:
        a, shift, c = _square_parts(polys)
        return PolyStep(node.name, node.source, length, "square", []), alpha, beta + shift, a, c
    first = polys[0]
    if isinstance(first, CompositePoly):  # composites are shared: one polynomial for all elements
        matrices = [np.array(stage.coef, dtype=np.float64) for stage in first.stages]
        for k, nxt in enumerate(first.stages[1:]):  # fold each stage's input map into the previous output
            (a,), (b,) = _input_map([nxt])
            matrices[k] = a * matrices[k]
            matrices[k][0] += b
        if first.product:
            bound = first.interval[1]
            if first.interval[0] != -bound:
                raise ValueError(f"{node.name}: composite products need a symmetric interval")
            # relu(x) = t (B/2)(1 + s), |x| = t B s with t = x / B the normalised input
            matrices[-1] = matrices[-1] * (bound / 2.0 if first.product == "relu" else bound)
            if first.product == "relu":
                matrices[-1][0] += bound / 2.0
        return PolyStep(node.name, node.source, length, "series", matrices, first.product), alpha, beta, out_scale, out_shift
    return PolyStep(node.name, node.source, length, "series", [_stage_matrix(polys)]), alpha, beta, out_scale, out_shift


def _broadcast(values: np.ndarray, length: int) -> np.ndarray:
    return np.broadcast_to(values, (length,)).astype(np.float64) if values.size == 1 else values.astype(np.float64)


def _scale_in_place(w: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray | None = None) -> sp.csr_matrix:
    """``w <- diag(rows) w diag(cols)`` without a matrix product or a copy."""
    w.data *= np.repeat(rows, np.diff(w.indptr))
    if cols is not None:
        w.data *= cols[w.indices]
    return w


def _build_steps(graph: PolyGraph) -> list[AffineStep | PolyStep]:
    """The steps of ``graph`` with every foldable map folded into the affine weights (which
    are scaled in place: the graph is consumed)."""
    polys: dict[str, tuple[PolyStep, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    consumer: dict[str, str] = {}
    for node in graph.nodes.values():
        if isinstance(node, PolyNode):
            polys[node.name] = _poly_step(node)
            consumer[node.source] = node.name
    steps: list[AffineStep | PolyStep] = []
    scaled: set[int] = set()  # matrices already scaled (nodes may share one)
    for name, node in graph.nodes.items():
        if isinstance(node, PolyNode):
            steps.append(polys[name][0])
            continue
        m = node.bias.size
        alpha, beta = np.ones(m), np.zeros(m)
        if name in consumer:
            _, a_in, b_in, _, _ = polys[consumer[name]]
            alpha, beta = _broadcast(a_in, m), _broadcast(b_in, m)
        weights, bias = [], node.bias.copy()
        for source, w in zip(node.sources, node.weights):
            cols = None
            if source in polys:
                _, _, _, a_out, c_out = polys[source]
                bias = bias + w @ _broadcast(c_out, w.shape[1])
                cols = _broadcast(a_out, w.shape[1])
            w = w.tocsr(copy=id(w) in scaled)
            scaled.add(id(w))
            weights.append(_scale_in_place(w, alpha, cols))
        bias = alpha * bias + beta
        squared = name in consumer and polys[consumer[name]][0].kind == "square"
        identity = bool(len(weights) == 1 and not squared and is_identity(weights[0]) and not bias.any())
        steps.append(AffineStep(name, list(node.sources), weights, bias, m, np.zeros(0, dtype=np.int64), identity=identity))
    return steps


def _assign_layouts(steps: list[AffineStep | PolyStep], graph: PolyGraph) -> list[str]:
    """Slot positions of every value (:func:`he_backend.lowering.layout.choose_layout`: the fewest
    diagonals); the input and the network's output are flat, as the client packs and reads
    them. Returns notes on the non-flat layouts chosen, with the diagonal counts measured."""
    layouts = {INPUT: Layout.flat(graph.input_shape)}
    output = graph.nodes[graph.output]
    flat = {graph.output, output.source if isinstance(output, PolyNode) else graph.output}
    notes = []
    for s in steps:
        if isinstance(s, PolyStep):
            layouts[s.name] = layouts[s.source]
        else:
            shape = graph.nodes[s.name].shape
            sources = [layouts[x] for x in s.sources]
            s.source_positions = [layout.positions for layout in sources]
            if s.identity and (s.name not in flat or np.array_equal(sources[0].positions, np.arange(s.length))):
                layouts[s.name] = Layout(shape, sources[0].positions, sources[0].gap, sources[0].base) \
                    if sources[0].shape == shape else Layout(shape, sources[0].positions)
            elif s.name in flat:
                s.identity = False
                layouts[s.name] = Layout.flat(shape)
            else:
                layouts[s.name], measured = choose_layout(shape, s.weights, sources)
                if layouts[s.name].gap > 1:
                    notes.append(f"{s.name}: gap-{layouts[s.name].gap} layout, diagonals measured per candidate {measured}")
        s.positions = layouts[s.name].positions
    return notes


def _power_keys(slots: int) -> KeySet:
    """A key for every power of two and its negative: the key set :func:`_cheapest_period`
    costs with (built once per plan; its search covers all ``slots``)."""
    powers = [1 << j for j in range(slots.bit_length() - 1)]
    return KeySet(tuple(powers + [-p for p in powers]), slots)


def _cheapest_period(step: AffineStep, block: int, keys: KeySet) -> None:
    """Set ``step.period`` to the tiled diagonal method (0) or the output period ``M`` of a
    periodic map (:mod:`he_backend.eval.cyclic`) that costs least for its sources' periods:
    ``ROTATION_COST`` products per key switch, with the keys of :func:`_power_keys`."""
    powers = [s for s in keys.steps if s > 0]
    smallest = 1 << int(step.positions.max()).bit_length() if step.positions.size else 1
    options = []
    for period in [0] + [m for m in powers + [keys.slots] if smallest <= m <= max(smallest, *step.source_periods)]:
        step.period = period
        step.prepare(block)
        options.append((ROTATION_COST * min(step.shape.cost(b, keys) for b in powers) + step.diagonal_count, period))
    step.period = min(options)[1]


def _replicate_input(steps: list[AffineStep | PolyStep], packing: str, slots: int) -> np.ndarray | None:
    """With sample packing, when the input's only reader is one affine map, the client packs
    the input replicated so that this map has fewer diagonals
    (:func:`he_backend.lowering.layout.row_aligned_input`); the map's weights are rewritten on those
    slots. ``None`` when that does not fit in the slots or saves nothing."""
    readers = [s for s in steps if INPUT in (s.sources if isinstance(s, AffineStep) else [s.source])]
    if packing != "sample" or len(readers) != 1 or not isinstance(readers[0], AffineStep):
        return None
    step = readers[0]
    if step.sources != [INPUT] or step.identity:
        return None
    gather, weight = row_aligned_input(step.weights[0], step.positions)
    flat = count_diagonals(step.weights[0], np.arange(step.weights[0].shape[1]), step.positions)
    if gather.size > slots or count_diagonals(weight, np.arange(gather.size), step.positions) >= flat:
        return None
    step.weights[0] = weight
    return gather


def _choose_rotations(steps: list[AffineStep | PolyStep], graph: PolyGraph, params: CkksParams,
                      key_memory: int) -> tuple[int, ...]:
    """Galois key steps for the plan (:func:`he_backend.lowering.key_choice.choose_keys`, as many as
    ``key_memory`` bytes hold, at least 2) and every affine step's cheapest giant step with them."""
    affine = [s for s in steps if isinstance(s, AffineStep) and not s.identity]
    sizes = {int(np.prod(n.shape[i:])) for n in graph.nodes.values() if getattr(n, "shape", None)
             for i in range(1, len(n.shape))}
    keys = choose_keys([s.shape for s in affine], params.slots, sizes, max_keys=_max_keys(params, key_memory))
    candidates = [1] + [abs(k) for k in keys.steps if abs(k) > 1]
    for s in affine:
        s.baby = best_baby(s.shape, keys, candidates)[1]
    return keys.steps


def _max_keys(params: CkksParams, key_memory: int) -> int:
    """Galois keys that ``key_memory`` bytes hold (at least 2, at most ``MAX_ROTATION_KEYS``)."""
    top = params.depth + 1
    key_bytes = 2 * (top + 1) * top * params.poly_modulus_degree * 8  # one key-switching key in memory
    return int(min(MAX_ROTATION_KEYS, max(2, key_memory // key_bytes)))


def _assign_levels(steps: list[AffineStep | PolyStep], top: int, resets: dict[int, set[str]] | None = None) -> int:
    """Output level of every step for inputs at level ``top`` (live values back at ``top`` at
    every refresh in ``resets``); returns the depth (of the deepest segment)."""
    level = step_levels(steps, top, {INPUT}, resets=resets)
    for s in steps:
        s.level = level[s.name]
    return top - min(level.values())


def _square_shifts(graph: PolyGraph) -> dict[str, float]:
    """``max |B|`` of every folded square ``A (t + B)^2 + C``."""
    return {n.name: float(np.abs(_square_parts(n.slot_polynomials())[1]).max())
            for n in graph.poly_nodes if n.fold_square}


def _operations(plan: "Plan") -> dict[str, tuple[int, int, int]]:
    return {r["step"]: (r["ct_ct_mults"], r["pt_mults"], r["rotations"]) for r in plan.counts()}


def _assign_scales(steps: list[AffineStep | PolyStep], engine: Engine) -> None:
    """Every step lands on the parameters' scale, except the inputs of squares, which sit at
    ``sqrt(scale * prime)`` so that squaring and one rescale give the scale exactly."""
    by_name = {s.name: s for s in steps}
    for s in steps:
        s.scale = engine.params.scale
    for s in steps:
        if isinstance(s, PolyStep) and s.kind == "square":
            source = by_name[s.source]
            source.scale = math.sqrt(engine.params.scale * engine.prime(source.level))


def compile(
    pann: nn.Module,
    input_shape: Sequence[int],
    packing: str = "sample",
    *,
    params: CkksParams | None = None,
    min_scale_bits: int = 30,
    max_scale_bits: int = 40,
    max_levels: int | None = None,
    mask: MaskPolicy | None = None,
    cost: CostModel | None = None,
    key_memory: int = KEY_MEMORY_BUDGET,
) -> Plan:
    """Compile ``pann`` for inputs of ``input_shape`` (no batch axis) into a :class:`Plan`.

    ``packing="sample"``: one sample per ciphertext (latency); ``"batch"``: as many samples as
    fit in the slots (throughput). Parameters are chosen for the network's depth with a scale
    between ``min_scale_bits`` and ``max_scale_bits`` unless ``params`` are given (the scale
    decides the precision: outputs keep roughly ``scale_bits - 15`` bits; a smaller floor
    allows a smaller, faster ring).

    Refresh. A network deeper than 128-bit-secure parameters allow (and, when ``max_levels`` is
    given, one deeper than ``max_levels``) is split into segments, joined by interactive refresh
    rounds placed at the cheapest points under ``cost`` and masked as ``mask`` says
    (:mod:`he_backend.protocol.refresh`). Segments have at most ``max_levels`` levels; without it (and
    without ``params``) the compiler tries every length on the ring it chose and keeps the one
    ``cost`` estimates cheapest (fewer levels make each key switch cheaper, more rounds cost
    latency and bytes). Given ``params`` without ``max_levels`` must hold the whole network,
    else :class:`ParameterError` says how many levels it needs.

    Galois keys. The compiler picks the rotation steps that get keys (every other rotation is
    composed of them) so that their evaluation keys take at most ``key_memory`` bytes in the
    server's and the client's memory (default 2 GiB: about 9 keys at N = 32768 with 20 primes);
    fewer keys cost more key switches per inference.
    """
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if key_memory < 0:
        raise ValueError(f"key_memory must be a number of bytes >= 0, got {key_memory}")
    if max_levels is not None and max_levels < 1:
        raise ValueError(f"max_levels must be >= 1, got {max_levels}")
    input_shape = tuple(int(v) for v in input_shape)
    graph = lower(pann, input_shape)
    nominal_depth = graph.depth
    output_length = graph.nodes[graph.output].bias.size if isinstance(graph.nodes[graph.output], AffineNode) \
        else int(np.prod(graph.nodes[graph.output].shape))
    steps = _build_steps(graph)
    notes = list(graph.notes) + _assign_layouts(steps, graph)
    longest = max([int(np.prod(input_shape))] + [int(s.positions.max()) + 1 for s in steps if s.positions.size])
    needed = 1 << max(0, (longest - 1).bit_length())
    scale_bits = params.scale_bits if params is not None else max_scale_bits
    for s in steps:
        if isinstance(s, PolyStep):
            s.prepare(scale_bits)
    depth = _assign_levels(steps, 0)
    if depth < nominal_depth:
        notes.append(f"depth {depth} < nominal {nominal_depth}: negligible leading coefficients were dropped")
    chosen = params is None
    if chosen:
        budget = depth if max_levels is None else min(depth, max_levels)
        secure = max_depth(max(MAX_LOG_Q), min_scale_bits)
        if budget > secure:  # too deep for any secure ring: segments of what the largest ring holds
            budget = max_depth(max(MAX_LOG_Q), max_scale_bits)
        params = choose_params(budget, min_scale_bits=min_scale_bits, max_scale_bits=max_scale_bits,
                               slots=min(needed, max(MAX_LOG_Q) // 2))
        for s in steps:  # re-plan at the chosen scale (it decides which coefficients are negligible)
            if isinstance(s, PolyStep):
                s.prepare(params.scale_bits)
        depth = _assign_levels(steps, 0)
    elif params.depth < depth and max_levels is None:
        raise ParameterError(
            f"the network needs {depth} levels but the given parameters have {params.depth}; "
            "lower the polynomial degrees, give parameters with more levels, or pass max_levels to "
            "split the plan into segments joined by interactive refresh"
        )
    gather = _replicate_input(steps, packing, params.slots)
    if gather is not None:
        needed = max(needed, 1 << (gather.size - 1).bit_length())
        notes.append(f"input packed by the client in a replicated layout of {gather.size} slots for "
                     f"{next(s.name for s in steps if isinstance(s, AffineStep) and INPUT in s.sources)}")
    block = min(needed, params.slots)  # a tensor larger than the slots spans several ciphertexts
    input_slots = int(np.prod(input_shape)) if gather is None else gather.size
    budget = params.depth if max_levels is None else min(params.depth, max_levels)
    periodic_maps = packing == "sample" and longest <= params.slots
    prepare_steps(steps, input_slots, block, params.slots, input_period(packing, input_slots, block),
                    partial(_cheapest_period, block=block, keys=_power_keys(params.slots)) if periodic_maps else None)
    if any(s.source_positions and ciphertext_count(s.positions, block) > 1 for s in steps if isinstance(s, AffineStep)):
        notes.append(f"tensors up to {longest} values span up to {-(-longest // block)} ciphertexts of {block} slots")
    plan = Plan(params, input_shape, block, _choose_rotations(steps, graph, params, key_memory), steps, graph.output, output_length,
                packing, notes, mask=mask or MaskPolicy(), input_gather=gather)
    if depth > budget:
        searched = chosen and max_levels is None  # else the segment length is the caller's
        try:
            lengths = [(b, params_for(params.poly_modulus_degree, b, params.scale_bits)) for b in range(budget, 0, -1)] \
                if searched else [(budget, params)]
            plan.params, plan.cuts, seconds = _cheapest_segments(plan, graph, lengths, cost or CostModel())
        except ValueError as exc:
            why = (f"no segment length of 1 to {budget} levels (what the largest secure ring holds) fits: a single "
                   f"step needs more, or the only places to cut hold values whose {plan.mask.sigma}-bit masks do not "
                   "fit the modulus; lower the polynomial degrees or lower sigma") if searched else str(exc)
            raise ParameterError(f"the network needs {depth} levels; {why}") from None
        if _max_keys(plan.params, key_memory) > _max_keys(params, key_memory):  # a shorter chain's keys are smaller
            plan.rotations = _choose_rotations(steps, graph, plan.params, key_memory)
        notes.append(f"{len(plan.cuts)} refresh round(s): {depth} levels in segments of at most {plan.params.depth}"
                     + (f" (the cost model's cheapest segment length: {seconds:.3g} s estimated per ciphertext)"
                        if searched else ""))
    _assign_levels(steps, plan.params.depth + 1, reset_names(steps, graph.output, plan.cuts))
    _assign_scales(steps, Engine(plan.params))
    return plan


def _cheapest_segments(plan: Plan, graph: PolyGraph, lengths: Sequence[tuple[int, CkksParams]],
                       cost: CostModel) -> tuple[CkksParams, list[Cut], float]:
    """Parameters, refresh points and estimated seconds per ciphertext of the cheapest of
    ``lengths``: (levels per segment, parameters with at least that many levels). Fewer levels
    make every operation cheaper (a key switch costs ``~ L^2``), more refresh rounds cost
    latency, bytes and the client's work (:class:`CostModel`). Raises the first length's
    ``ValueError`` when none fits."""
    operations = _operations(plan)
    bounds = value_bounds(plan.steps, _square_shifts(graph), plan.mask.margin)
    best, error = None, None
    for budget, params in lengths:
        try:
            cuts, seconds = place_cuts(plan.steps, graph.output, params, budget, bounds, plan.mask, cost,
                                       lambda s: operations[s.name], plan.ciphertexts)
        except ValueError as exc:
            error = error or exc
            continue
        if best is None or seconds < best[2]:
            best = (params, cuts, seconds)
    if best is None:
        raise error
    return best
