"""Which rotations get Galois keys: :func:`choose_keys` adds, one at a time, the key steps that
save most key switches over the plan's maps (each with its cheapest giant step,
:func:`best_baby`), as costed by :meth:`he_backend.eval.rotations.MapShape.cost`."""
from __future__ import annotations

from typing import Iterable, Sequence

from ..eval.rotations import KeySet, MapShape


def best_baby(shape: MapShape, keys: KeySet, candidates: Sequence[int]) -> tuple[int, int]:
    """``(cost, baby)`` of the cheapest giant step among ``candidates`` (ties: the smaller)."""
    return min((shape.cost(b, keys), b) for b in candidates)


def candidate_steps(slots: int, sizes: Iterable[int] = ()) -> list[int]:
    """Powers of two below ``slots`` and the given structural sizes (a layout's row and plane
    widths): the giant steps and key steps :func:`choose_keys` tries."""
    out = {1 << j for j in range(int(slots).bit_length() - 1)}
    out.update(int(s) for s in sizes if 1 < int(s) < slots)
    return sorted(out)


def choose_keys(shapes: Sequence[MapShape], slots: int, sizes: Iterable[int] = (),
                max_keys: int = 8, min_gain: float = 0.01) -> KeySet:
    """A key set of at most ``max_keys`` steps for maps of these shapes: start from ``{1, -1}``
    and add, one move at a time, the candidate step ``m``, ``-m`` or the pair ``+-m`` (``m`` in
    :func:`candidate_steps`) that saves most key switches per evaluation per added key, while
    that saving is at least ``min_gain`` of the current total; when no addition pays, the
    exchange of one chosen key for another candidate that saves most, if any does."""
    magnitudes = candidate_steps(slots, sizes)
    unique = {}
    for shape in shapes:  # identical maps (repeated blocks) are costed once, weighted
        unique.setdefault(shape.key, [shape, 0])[1] += 1

    splits = {(id(shape), b): shape.split(b) for shape, _ in unique.values() for b in [1, *magnitudes]}

    def total(keys: KeySet) -> int:
        babies = [1] + [abs(s) for s in keys.steps if abs(s) > 1]
        return sum(count * min(shape.cost(b, keys, splits[(id(shape), b)]) for b in babies)
                   for shape, count in unique.values())

    if not unique or all(not s.folds and all(a.size == 0 or not a.any() for a in s.inputs + s.outputs)
                         for s, _ in unique.values()):
        return KeySet((), slots)
    chosen = {1, -1}
    current = total(KeySet(tuple(sorted(chosen)), slots))
    moves = [{m} for m in magnitudes] + [{-m} for m in magnitudes] + [{m, -m} for m in magnitudes]

    def best_addition() -> tuple[float, int, set[int]] | None:
        options = [((current - cost) / len(move - chosen), cost, move) for move in moves
                   if not move <= chosen and len(chosen | move) <= max_keys
                   for cost in [total(KeySet(tuple(sorted(chosen | move)), slots))]]
        return max(options, key=lambda o: (o[0], -len(o[2]))) if options else None

    def best_exchange() -> tuple[int, set[int]] | None:
        options = [(total(KeySet(tuple(sorted(chosen - {key} | {c})), slots)), chosen - {key} | {c})
                   for key in chosen for m in magnitudes for c in (m, -m) if c not in chosen]
        return min(options, key=lambda o: o[0]) if options else None

    for _ in range(4 * max_keys):  # additions while they pay, exchanges when they stop paying
        added = best_addition()
        if added is not None and added[0] >= max(1.0, min_gain * current):
            current, chosen = added[1], chosen | added[2]
            continue
        exchanged = best_exchange()
        if exchanged is None or exchanged[0] >= current:
            break
        current, chosen = exchanged
    return KeySet(tuple(sorted(chosen)), slots)
