"""polyact.tune: the DP over levels against brute force, the tuned PANN against the cheapest
uniform conversion (measured independently with polyact.tradeoff.sweep and the lowered graph's
depth), distillation, and the command.

Planted faults (each turned the named test red):
- DP ignores sensitivity (every option costs 0 budget): test_dp_is_the_exact_multiple_choice_knapsack.
- sensitivity ignored in tune (_kl returns a constant, so the DP sees uniform sensitivities and
  picks uniform degrees): test_tune_spends_levels_where_the_network_is_sensitive.
- distillation term dropped in train_classifier (loss = CE only):
  test_distillation_follows_the_teacher_not_the_labels.
"""
import itertools
import json
import random

import pytest
import torch

import polyact
from polyact.cli import main
from polyact.data import Dataset
from polyact.ir.lower import lower
from polyact.nn.poly_act import polyact_layers
from polyact.tradeoff import sweep
from polyact.train.loop import evaluate, predict, train_classifier
from polyact.train.robust import robust_finetune
from polyact.tuning import cheapest_within

pytestmark = pytest.mark.filterwarnings("ignore::polyact.nn.poly_act.OutOfRangeWarning")


def test_dp_is_the_exact_multiple_choice_knapsack():
    rng = random.Random(0)
    for _ in range(40):
        sites, options, budget = rng.randint(1, 4), rng.randint(1, 4), rng.randint(0, 12)
        cost = [[rng.randint(1, 9) for _ in range(options)] for _ in range(sites)]
        sens = [[rng.randint(0, 6) for _ in range(options)] for _ in range(sites)]
        feasible = [c for c in itertools.product(range(options), repeat=sites)
                    if sum(sens[s][o] for s, o in enumerate(c)) <= budget]
        got = cheapest_within(cost, sens, budget, bins=max(budget, 1))  # integer sensitivities: the grid is exact
        if not feasible:
            assert got is None
            continue
        best = min(sum(cost[s][o] for s, o in enumerate(c)) for c in feasible)
        assert sum(sens[s][o] for s, o in enumerate(got)) <= budget
        assert sum(cost[s][o] for s, o in enumerate(got)) == best


@pytest.fixture(scope="module")
def short_cnn(digits):
    """A CNN trained 3 epochs: less settled than digits_cnn, so degree 3 everywhere loses > 1 point."""
    torch.manual_seed(0)
    model = polyact.models.build_model("cnn", digits.input_shape, digits.num_classes, "relu")
    train_classifier(model, digits, epochs=3, seed=0)
    return model.eval()


def test_tune_spends_levels_where_the_network_is_sensitive(digits, short_cnn):
    tuned = polyact.tune(short_cnn, digits, max_loss=1.0, objective="depth", finetune=False)
    original = evaluate(short_cnn, digits.x_test, digits.y_test)
    assert tuned.original_accuracy == pytest.approx(original)
    assert evaluate(tuned.pann, digits.x_test, digits.y_test) >= original - 1.0
    uniform = sweep(short_cnn, digits, methods=("minimax", "lsq"), degrees=(3, 7, 15, 31), progress=False)
    cheapest = uniform.cheapest(1.0)
    assert cheapest is not None
    depth = lower(tuned.pann, digits.input_shape).depth
    assert depth < cheapest.depth, (tuned.table(), uniform.table())
    degrees = {layer.degree for layer in polyact_layers(tuned.pann).values()}
    assert len(degrees) > 1  # not one degree everywhere
    assert any(r.setting.startswith("uniform") for r in tuned.rows) and any(r.meets for r in tuned.rows)


def test_distillation_follows_the_teacher_not_the_labels(digits, digits_mlp):
    """Training labels all 0: only the distillation term can keep the original's predictions."""
    constant = Dataset("constant", digits.x_train, torch.zeros_like(digits.y_train), digits.x_test, digits.y_test)
    teacher = predict(digits_mlp, digits.x_test).argmax(1)
    result = robust_finetune(digits_mlp, constant, degree=7, distill=1.0, epochs=2, mixup=0.0, guard=False)
    agreement = 100.0 * (predict(result.pann, digits.x_test).argmax(1) == teacher).float().mean().item()
    assert agreement > 80.0  # labels alone would make it predict 0 (about 10% agreement)


def test_distilling_into_a_pann_needs_its_teacher(digits, digits_mlp):
    pann, _ = polyact.convert(digits_mlp, digits.calibration(), degree=7)
    with pytest.raises(ValueError, match="teacher="):
        robust_finetune(pann, digits, distill=0.5, epochs=1)


def test_tune_rejects_bad_settings(digits, digits_mlp):
    with pytest.raises(ValueError, match="objective"):
        polyact.tune(digits_mlp, digits, objective="speed")
    with pytest.raises(ValueError, match="max_loss"):
        polyact.tune(digits_mlp, digits, max_loss=-1)


def test_tune_command_prints_the_choice_and_table(tmp_path, capsys):
    out = tmp_path / "tuned.pann"
    assert main(["tune", "--model", "mlp", "--dataset", "digits", "--epochs", "2", "--degrees", "3", "7",
                 "--finetune", "never", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["choice"]) and result["rows"] and result["out"] == str(out)
    pann = polyact.load_pann(out)
    assert {n: f"{m.meta['method']} d={m.degree}" for n, m in polyact_layers(pann).items()} == result["choice"]


def test_tune_fine_tunes_when_conversion_alone_misses_the_budget(digits, short_cnn):
    """Degree 3 only, no loss allowed: conversion loses ~6 points, so the same call fine-tunes
    (distillation, guard) and returns a degree-3 PANN back at the original's accuracy."""
    tuned = polyact.tune(short_cnn, digits, max_loss=0.0, objective="depth", degrees=(3,), methods=("minimax",),
                         alphas=(), epochs=2)
    original = evaluate(short_cnn, digits.x_test, digits.y_test)
    converted = [r for r in tuned.rows if r.setting.startswith("uniform")]
    assert converted and all(r.accuracy < original - 2 for r in converted)
    assert tuned.finetuned
    assert evaluate(tuned.pann, digits.x_test, digits.y_test) >= original - 1e-6
    assert {m.degree for m in polyact_layers(tuned.pann).values()} == {3}
