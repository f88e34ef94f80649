"""Per-layer precision allocation: the cheapest per-layer precisions that keep the accuracy.

A PANN's layers are not equally sensitive to their approximation error. Starting from the
smallest *uniform* precision ``alpha_u`` that meets the accuracy bar, :func:`allocate` lowers
one layer's precision at a time, greedily by sensitivity: each round it tries lowering every
layer still allowed to move by ``step`` bits and keeps the move that loses the least accuracy
(ties: the larger cost saving), as long as the accuracy stays at or above ``min_accuracy``. A
layer whose lowering breaks the bar is frozen (more error there will not help later).

Candidates are precomputed: the model is converted once per precision, and an assignment is
evaluated by swapping the converted layers into one skeleton, so no fit is repeated.

Costs are reported per ciphertext: the network depth (CKKS levels, from the lowered graph) and
the ciphertext-ciphertext products of every activation's polynomial evaluation
(:func:`layer_ct_ct_mults`, from :mod:`polyact.approx.schedule`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from ..approx.schedule import plan_polynomial
from ..nn.poly_act import PolyAct, polyact_layers

Assignment = dict[str, float]


@dataclass
class Allocation:
    """The chosen per-layer precisions, the uniform start, and the accuracies met."""

    alphas: Assignment
    uniform_alpha: float
    accuracy: float
    uniform_accuracy: float
    min_accuracy: float
    evaluations: int
    history: list[tuple[str, float, float]] = field(default_factory=list)  # (layer, new alpha, accuracy)

    @property
    def bits_lowered(self) -> float:
        """Sum over layers of ``uniform_alpha - alpha``."""
        return float(sum(self.uniform_alpha - a for a in self.alphas.values()))


def greedy_allocate(
    layers: Sequence[str],
    evaluate: Callable[[Assignment], float],
    start: float,
    min_accuracy: float,
    *,
    floor: float = 1.0,
    step: float = 1.0,
    saving: Callable[[str, float, float], float] | None = None,
) -> Allocation:
    """Greedy sensitivity-ordered lowering of per-layer precisions from ``start``.

    ``evaluate(assignment)`` returns the accuracy of the PANN with those per-layer precisions;
    ``saving(layer, old, new)`` ranks ties (default: none). Raises ``ValueError`` if the
    uniform start itself misses ``min_accuracy``."""
    if step <= 0 or floor > start:
        raise ValueError(f"need step > 0 and floor <= start, got step={step}, floor={floor}, start={start}")
    current = {name: float(start) for name in layers}
    accuracy = evaluate(current)
    evaluations = 1
    if accuracy < min_accuracy:
        raise ValueError(f"the uniform precision {start:g} reaches {accuracy:.2f}, below the bar "
                         f"{min_accuracy:.2f}; start from a higher uniform precision")
    result = Allocation(dict(current), float(start), accuracy, accuracy, min_accuracy, 0)
    movable = set(layers)
    while movable:
        best: tuple[float, float, str] | None = None
        for name in sorted(movable):
            lower = current[name] - step
            if lower < floor:
                movable.discard(name)
                continue
            trial_accuracy = evaluate({**current, name: lower})
            evaluations += 1
            if trial_accuracy < min_accuracy:
                movable.discard(name)
                continue
            gain = saving(name, current[name], lower) if saving else 0.0
            if best is None or (trial_accuracy, gain) > (best[0], best[1]):
                best = (trial_accuracy, gain, name)
        if best is None:
            break
        current[best[2]] -= step
        result.history.append((best[2], current[best[2]], best[0]))
        result.accuracy = best[0]
    result.alphas, result.evaluations = current, evaluations
    return result


def _key(setting: Any) -> Any:
    return float(setting) if isinstance(setting, (int, float)) else setting


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class Candidates:
    """A model converted once per precision; :meth:`build` assembles any per-layer assignment.

    ``convert_at(alpha)`` returns the PANN at uniform precision ``alpha`` (any hashable setting,
    e.g. a :class:`polyact.tuning.Option`; numbers are compared as floats)."""

    def __init__(self, convert_at: Callable[[Any], nn.Module], alphas: Sequence[Any]) -> None:
        self.panns = {_key(a): convert_at(_key(a)) for a in alphas}
        names = [list(polyact_layers(p)) for p in self.panns.values()]
        if any(n != names[0] for n in names):
            raise ValueError("the PANNs at different precisions have different activation layers")
        self.layers: list[str] = names[0]
        self.skeleton = copy.deepcopy(next(iter(self.panns.values())))

    def layer(self, name: str, alpha: Any) -> PolyAct:
        if _key(alpha) not in self.panns:
            raise ValueError(f"precision {alpha} was not converted; candidates are {list(self.panns)}")
        return polyact_layers(self.panns[_key(alpha)])[name]

    def build(self, assignment: Assignment) -> nn.Module:
        """The skeleton with each layer's polynomial taken from the PANN at its precision
        (shared modules, not copies: build one assignment at a time)."""
        missing = set(self.layers) - set(assignment)
        if missing:
            raise ValueError(f"the assignment lacks layers {sorted(missing)}")
        for name in self.layers:
            _set_submodule(self.skeleton, name, self.layer(name, assignment[name]))
        return self.skeleton


def layer_ct_ct_mults(layer: PolyAct) -> int:
    """Ciphertext-ciphertext products of one evaluation of ``layer`` on a ciphertext: each
    stage's Chebyshev schedule (:func:`polyact.approx.schedule.plan_polynomial`) plus one for the
    ``x * s(x)`` product of composite ReLU / |x|. Per-channel stages are planned jointly."""
    total = 1 if layer.product else 0
    for i in range(layer.num_stages):
        coef = getattr(layer, f"coef_{i}").detach().cpu().numpy()
        total += plan_polynomial(coef).ct_ct_mults
    return total


def network_costs(pann: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Depth (CKKS levels of the lowered graph) and the total ciphertext-ciphertext products
    of all activation layers of ``pann``."""
    from ..ir.lower import lower

    cts = {name: layer_ct_ct_mults(m) for name, m in polyact_layers(pann).items()}
    return {"depth": lower(pann, tuple(input_shape)).depth, "ct_ct_mults": int(np.sum(list(cts.values()))),
            "layers": cts}
