"""Robust training: each technique does what it says."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import polyact
from polyact.convert.calibration import choose_interval
from polyact.convert.pipeline import convert
from polyact.nn.poly_act import PolyAct, polyact_layers
from polyact.train.loop import evaluate, train_classifier
from polyact.train.robust import (
    PerturbedActivation,
    RangePenalty,
    RobustConfig,
    _perturbed,
    range_penalty,
    robust_finetune,
)


def test_range_penalty_is_zero_inside_and_quadratic_outside():
    inside = torch.linspace(-2.0, 3.0, 101)
    assert range_penalty(inside, -2.0, 3.0).item() == 0.0
    half = 2.5
    for k in (0.5, 1.0, 2.0):
        above = torch.tensor([3.0 + k * half])
        below = torch.tensor([-2.0 - k * half])
        assert range_penalty(above, -2.0, 3.0).item() == pytest.approx(k**2)
        assert range_penalty(below, -2.0, 3.0).item() == pytest.approx(k**2)
    mixed = torch.tensor([0.0, 3.0 + half])  # mean over elements
    assert range_penalty(mixed, -2.0, 3.0).item() == pytest.approx(0.5)


def test_range_penalty_hooks_collect_in_training_mode_only():
    layer = nn.Identity()
    penalty = RangePenalty({layer: (-1.0, 1.0)}, weight=3.0)
    layer.eval()
    layer(torch.tensor([5.0]))
    assert penalty().item() == 0.0
    layer.train()
    layer(torch.tensor([3.0]))  # 2 half-widths outside: 4
    assert penalty().item() == pytest.approx(12.0)
    assert penalty().item() == 0.0  # cleared after each call
    penalty.remove()
    layer(torch.tensor([3.0]))
    assert penalty().item() == 0.0


def test_perturbation_is_uniform_with_the_requested_magnitude():
    torch.manual_seed(0)
    magnitude = 2.0**-5
    noisy = PerturbedActivation(nn.ReLU(), magnitude, negative_only=True)
    x = torch.randn(200_000)
    noisy.train()
    delta = noisy(x) - torch.relu(x)
    negative = delta[x < 0]
    assert negative.abs().max() <= magnitude
    assert negative.std().item() == pytest.approx(magnitude / math.sqrt(3), rel=0.02)
    assert abs(negative.mean().item()) < 0.01 * magnitude
    assert torch.equal(delta[x > 0], torch.zeros_like(delta[x > 0]))  # ReLU: negative inputs only
    everywhere = PerturbedActivation(nn.GELU(), magnitude, negative_only=False).train()
    assert (everywhere(x) - nn.functional.gelu(x))[x > 0].abs().max() > 0.9 * magnitude
    noisy.eval()
    assert torch.equal(noisy(x), torch.relu(x))  # exact at evaluation


def test_noise_magnitude_is_2_to_the_minus_bits_times_the_interval_bound(digits, digits_cnn):
    model, intervals = _perturbed(digits_cnn, digits, RobustConfig(perturbation="noise", noise_bits=6))
    with torch.no_grad():
        pre = digits_cnn.features[:2](digits.calibration())
    low, high = choose_interval(pre.min().item(), pre.max().item(), 0.1)
    layer = model.get_submodule("features.2")
    assert isinstance(layer, PerturbedActivation) and layer.negative_only
    assert layer.magnitude == pytest.approx(2.0**-6 * max(abs(low), abs(high)), rel=1e-6)
    assert intervals[layer] == pytest.approx((low, high), rel=1e-6)


def test_trainable_coefficients_get_gradients_and_keep_degree_and_depth():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    pann, _ = convert(model, torch.randn(128, 3), degree=7)
    layer = polyact_layers(pann)["1"].set_trainable()
    before = (layer.degree, layer.depth, layer.interval)
    assert isinstance(layer.coef_0, nn.Parameter)
    pann(torch.randn(16, 3)).pow(2).sum().backward()
    assert layer.coef_0.grad is not None and layer.coef_0.grad.abs().sum() > 0
    assert layer.interval_0.grad is None  # intervals are fixed buffers
    with torch.no_grad():
        layer.coef_0.add_(0.01)
    assert (layer.degree, layer.depth, layer.interval) == before
    assert "coef_0" in dict(layer.named_parameters())


def test_clamping_in_training_bounds_the_polynomial_but_never_changes_evaluation():
    poly = polyact.fit("relu", (-1, 1), 9)
    layer = PolyAct(poly, monitor=False)
    layer.clamp_in_training = True
    big = torch.tensor([50.0, -50.0])
    layer.train()
    torch.testing.assert_close(layer(big), torch.tensor(poly(np.array([1.0, -1.0])), dtype=torch.float32))
    layer.eval()
    torch.testing.assert_close(layer(big), torch.tensor(poly(np.array([50.0, -50.0])), dtype=torch.float32))


@pytest.mark.slow  # end to end; the mechanics are checked fast in test_guards.py
def test_training_through_a_degree_2_polynomial_recovers_accuracy(digits, digits_cnn):
    converted, _ = convert(digits_cnn, digits.calibration(), degree=2)
    before = evaluate(converted, digits.x_test, digits.y_test)
    result = robust_finetune(digits_cnn, digits, degree=2, epochs=20)
    after = evaluate(result.pann, digits.x_test, digits.y_test)
    original = evaluate(digits_cnn, digits.x_test, digits.y_test)
    assert before < original - 5  # plain conversion at degree 2 loses accuracy ...
    assert after >= original - 1.5  # ... robust training recovers it
    assert all(layer.degree == 2 for layer in result.report.layers)
    assert result.report.depth == 5  # degree 2 with its scale folded: one level per activation
    assert not any(m.clamp_in_training for m in polyact_layers(result.pann).values())


def test_progressive_replacement_schedules(digits):
    torch.manual_seed(0)
    model = polyact.models.build_model("mlp", digits.input_shape, 10, "relu", hidden=(16, 16))
    train_classifier(model, digits, epochs=1)
    by_layer = robust_finetune(model, digits, degree=3, progressive="layers", epochs=2)
    assert [s.label for s in by_layer.stages] == ["layers ['layers.2']", "layers ['layers.2', 'layers.4']"]
    assert len(polyact_layers(by_layer.pann)) == 2
    by_degree = robust_finetune(model, digits, degree=3, progressive="degree", epochs=3)
    degrees = [s.label for s in by_degree.stages]
    assert degrees == [f"precision {{'degree': {d}}}" for d in (15, 7, 3)]
    assert {layer.degree for layer in polyact_layers(by_degree.pann).values()} == {3}


def test_noise_training_and_pann_fine_tuning(digits, digits_mlp):
    noisy = robust_finetune(digits_mlp, digits, perturbation="noise", bits=5, epochs=2)
    assert noisy.stages[0].label == "noise 2^-5 B" and noisy.report is not None
    assert all(layer.max_error <= 2**-5 * max(map(abs, layer.interval)) for layer in noisy.report.layers)
    pann, _ = convert(digits_mlp, digits.calibration(), degree=3)
    tuned = robust_finetune(pann, digits, epochs=2, trainable_coefficients=True)
    old, new = polyact_layers(pann)["layers.2"], polyact_layers(tuned.pann)["layers.2"]
    assert new.degree == old.degree and new.interval == old.interval
    assert not torch.equal(new.coef_0.detach(), old.coef_0)  # the coefficients were trained


@pytest.mark.parametrize("kwargs, message", [
    (dict(degree=3, perturbation="dropout"), "perturbation must be"),
    (dict(degree=3, progressive="random"), "progressive must be"),
    (dict(), "target precision"),
    (dict(degree=3, perturbation="noise", progressive="layers"), "perturbation='polynomial'"),
    (dict(degree=3, learning_rate=0.1), "unknown settings"),
    (dict(perturbation="noise", degree=3), "noise_bits"),
])
def test_bad_settings_are_explained(digits, digits_mlp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        robust_finetune(digits_mlp, digits, **kwargs)


def test_trainer_skips_non_finite_batches_and_stops_on_divergence(digits):
    torch.manual_seed(0)
    model = polyact.models.build_model("mlp", (1, 8, 8), 10, hidden=(8,))
    calls = []

    def sometimes_nan():
        calls.append(1)
        return torch.tensor(float("nan")) if len(calls) % 5 == 0 else torch.zeros(())

    history = train_classifier(model, digits, epochs=1, extra_loss=sometimes_nan)
    assert all(np.isfinite(history.loss)) and all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(RuntimeError, match="diverged"):
        train_classifier(model, digits, epochs=1, extra_loss=lambda: torch.tensor(float("inf")))
