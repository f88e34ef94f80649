"""Per-layer precision allocation: greedy by sensitivity, checked against brute force."""
import itertools

import pytest
import torch
from torch import nn

from polyact.convert.pipeline import convert
from polyact.train.allocate import Candidates, greedy_allocate, layer_ct_ct_mults
from polyact.train.loop import evaluate


def toy_accuracy(assignment):
    """Layer 'a' needs 6 bits, layer 'b' is insensitive down to 2 bits."""
    return 100.0 - 10.0 * max(0.0, 6 - assignment["a"]) - 0.1 * max(0.0, 6 - assignment["b"]) - 50.0 * (assignment["b"] < 2)


def test_greedy_lowers_the_insensitive_layer_only():
    result = greedy_allocate(["a", "b"], toy_accuracy, start=6, min_accuracy=99.0, floor=1)
    assert result.alphas == {"a": 6.0, "b": 2.0}
    assert result.accuracy == pytest.approx(99.6) and result.bits_lowered == 4.0


def test_greedy_matches_brute_force_on_two_layers():
    def accuracy(assignment):  # both layers matter, unequally, with an interaction
        a, b = assignment["a"], assignment["b"]
        return 100.0 - 1.5 * (8 - a) - 0.7 * (8 - b) - 0.4 * (8 - a) * (8 - b)

    cost = lambda assignment: sum(assignment.values())  # noqa: E731
    bar = 94.0
    feasible = [dict(a=a, b=b) for a, b in itertools.product(range(2, 9), repeat=2) if accuracy(dict(a=a, b=b)) >= bar]
    cheapest = min(cost(x) for x in feasible)
    result = greedy_allocate(["a", "b"], accuracy, start=8, min_accuracy=bar, floor=2)
    assert accuracy(result.alphas) >= bar
    assert cost(result.alphas) == cheapest


def test_greedy_refuses_a_start_below_the_bar():
    with pytest.raises(ValueError, match="higher uniform precision"):
        greedy_allocate(["a"], lambda a: 50.0, start=4, min_accuracy=90.0)


def test_candidates_swap_layers_and_costs_follow_the_precision(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    calib = digits.calibration(256)
    candidates = Candidates(lambda a: convert(model, calib, alpha=a)[0], [2, 6])
    assert candidates.layers == ["2", "4"]
    mixed = candidates.build({"2": 6, "4": 2})
    assert mixed.get_submodule("2") is candidates.layer("2", 6) and mixed.get_submodule("4") is candidates.layer("4", 2)
    low, high = candidates.layer("2", 2), candidates.layer("2", 6)
    assert low.depth < high.depth and layer_ct_ct_mults(low) < layer_ct_ct_mults(high)
    reference = convert(model, calib, alpha=6, overrides={"4": {"alpha": 2}})[0]
    assert evaluate(mixed, digits.x_test, digits.y_test) == evaluate(reference, digits.x_test, digits.y_test)
    with pytest.raises(ValueError, match="not converted"):
        candidates.layer("2", 4)
