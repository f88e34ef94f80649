"""Behaviours that once survived planted faults (issue 15), each checked against an independent
reference: a literal value, numpy, or a hand computation."""
import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import erf
from torch import nn

import polyact
import polyact.train.robust
from polyact.cli.commands import main
from polyact.convert.pipeline import convert
from polyact.data import Dataset
from polyact.nn.poly_act import out_of_range_fraction, polyact_layers
from polyact.tradeoff import measure, sweep
from polyact.train.loop import predict
from polyact.train.robust import RobustResult, robust_finetune

TESTS = Path(__file__).parent


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


# ---- conversion: composite margin, bits, out-of-range fractions -----------------------------------
@pytest.mark.parametrize("margin, bound", [(0.0, 3.0), (0.25, 3.75)])
def test_composite_interval_is_symmetric_and_grows_by_the_margin(margin, bound):
    x = torch.linspace(-2.0, 3.0, 101).reshape(-1, 1)  # the largest magnitude seen is 3
    pann, report = convert(nn.Sequential(nn.ReLU()), x, alpha=5, margin=margin)
    assert report.layers[0].interval == pytest.approx((-bound, bound), rel=1e-12)
    assert polyact_layers(pann)["0"].interval == pytest.approx((-bound, bound), rel=1e-12)
    inside = torch.tensor([[0.98 * bound], [-0.98 * bound]], dtype=torch.float64)
    expected = np.maximum(inside.numpy(), 0.0)
    assert np.abs(pann.double()(inside).detach().numpy() - expected).max() <= report.layers[0].max_error


def test_bits_set_the_tolerance_relative_to_the_interval_bound():
    x = torch.linspace(-1.0, 16.0, 200).reshape(-1, 1)  # margin 0: interval [-1, 16], B = 16
    pann, report = convert(nn.Sequential(nn.GELU()), x, bits=4, margin=0.0)
    tolerance = 16 * 2.0**-4  # 2^-bits * B = 1.0
    layer = report.layers[0]
    assert layer.interval == pytest.approx((-1.0, 16.0))
    grid = np.linspace(-1.0, 16.0, 20001)
    poly = polyact_layers(pann)["0"].polynomial
    assert np.abs(poly(grid) - _gelu(grid)).max() <= tolerance * (1 + 1e-9)
    # the lowest degree meeting it: a constant misses by at least (max - min) / 2 = 8.08 > 1
    assert (_gelu(grid).max() - _gelu(grid).min()) / 2 > tolerance and layer.degree == 1


def test_conversion_report_counts_calibration_inputs_outside_a_percentile_band():
    x = torch.arange(1000.0).reshape(-1, 1)  # the 10th / 90th percentiles are 99.9 and 899.1
    _, report = convert(nn.Sequential(nn.GELU()), x, degree=3, margin=0.0, range_mode="percentile", percentile=90)
    assert report.layers[0].interval == pytest.approx((99.9, 899.1))
    assert report.layers[0].out_of_range == pytest.approx(0.2)  # 0..99 and 900..999


def _outside_data():
    """Training inputs exactly spanning [-0.5, 0.5]; test inputs with 7 of 40 values outside."""
    x_train = torch.linspace(-0.5, 0.5, 400).reshape(100, 4)
    x_test = torch.linspace(-0.4, 0.4, 40).reshape(10, 4)
    x_test.view(-1)[[0, 5, 11, 17, 23, 30, 39]] = torch.tensor([0.9, -0.7, 0.51, -3.0, 2.0, -0.6, 0.55])
    y_train = torch.arange(100) % 3
    return Dataset("outside", x_train, y_train, x_test, torch.arange(10) % 3)


def _relu_head():
    torch.manual_seed(0)
    return nn.Sequential(nn.ReLU(), nn.Linear(4, 3)).eval()  # the activation sees the inputs as they are


def test_model_level_fraction_and_tradeoff_measure_count_inputs_outside():
    data = _outside_data()
    model = _relu_head()
    pann, report = convert(model, data.x_train, degree=3, margin=0.0)
    assert report.layers[0].interval == pytest.approx((-0.5, 0.5)) and report.layers[0].out_of_range == 0.0
    *_, outside = measure(pann, data.x_test, data.y_test, predict(model, data.x_test))
    assert outside == pytest.approx(7 / 40)
    assert out_of_range_fraction(pann) == pytest.approx(7 / 40)
    row = sweep(model, data, methods=("minimax",), degrees=(3,), margins=(0.0,), progress=False).rows[0]
    assert row.out_of_range == pytest.approx(7 / 40)


def test_polyact_train_reports_the_fraction_of_test_inputs_outside(digits, monkeypatch, capsys):
    calibration = torch.linspace(-0.5, 0.5, 64 * 16).reshape(16, 1, 8, 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(64, 10)).eval()
    pann, report = convert(model, calibration, degree=3, margin=0.0)
    assert report.layers[0].interval == pytest.approx((-0.5, 0.5))

    def finetuned(*args, **kwargs):
        return RobustResult(pann, report, [])

    monkeypatch.setattr(polyact.train.robust, "robust_finetune", finetuned)
    assert main(["train", "--model", "mlp", "--epochs", "1", "--degree", "3", "--json"]) == 0
    expected = (digits.x_test > 0.5).double().mean().item()  # pixels are k/16; ReLU sees them directly
    assert 0.05 < expected < 0.5
    assert json.loads(capsys.readouterr().out)["out_of_range"] == pytest.approx(expected)


# ---- robust training: penalty, clamping, weights carried between stages ----------------------------
def _robust_data():
    torch.manual_seed(0)
    x_train = torch.randn(96, 4)
    return Dataset("robust", x_train, torch.arange(96) % 3, torch.randn(24, 4), torch.arange(24) % 3)


def _two_activation_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.GELU(), nn.Linear(5, 3)).eval()


class TrainingSpy:
    """Stands in for ``train_classifier``: checks what robust training set up, then moves every
    weight by +1 as if trained, recording the weights entering and leaving each stage."""

    def __init__(self, penalty_weight):
        self.penalty_weight = penalty_weight
        self.entering, self.leaving, self.penalties = [], [], []

    @staticmethod
    def _weights(model):
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    def __call__(self, model, data, *, extra_loss=None, **kwargs):
        self.entering.append(self._weights(model))
        layers = polyact_layers(model)
        assert layers, "robust training trains through the polynomials"
        assert extra_loss is not None, "the range penalty is not applied"
        seen = {}
        handles = [m.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, (args[0], out)))
                   for name, m in layers.items()]
        model.train()
        model(10.0 * torch.randn(32, 4))  # far outside every interval
        for h in handles:
            h.remove()
        expected = []
        for name, (x, y) in seen.items():
            low, high = layers[name].interval
            z = x.detach().double().numpy()
            clipped = np.clip(z, low, high)  # clamped in training: the polynomial on the interval
            np.testing.assert_allclose(y.detach().double().numpy(), layers[name].polynomial(clipped), rtol=1e-4, atol=1e-4)
            excess = np.maximum(z - high, 0) + np.maximum(low - z, 0)
            expected.append(np.mean((excess / ((high - low) / 2)) ** 2))
        penalty = extra_loss().item()
        self.penalties.append(penalty)
        assert penalty == pytest.approx(self.penalty_weight * np.mean(expected), rel=1e-4)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        self.leaving.append(self._weights(model))


@pytest.mark.parametrize("progressive, stages", [(None, 1), ("layers", 2), ("degree", 3)])
def test_robust_training_penalises_clamps_and_carries_weights_between_stages(monkeypatch, progressive, stages):
    spy = TrainingSpy(penalty_weight=2.5)
    monkeypatch.setattr(polyact.train.robust, "train_classifier", spy)
    model = _two_activation_model()
    result = robust_finetune(model, _robust_data(), degree=3, range_penalty=2.5, progressive=progressive, epochs=6,
                             guard=False)  # the spy's +1 is no training: the guard would (rightly) undo it
    assert len(spy.entering) == len(result.stages) == stages
    original = {k: v for k, v in model.named_parameters()}
    for name, value in spy.entering[0].items():
        torch.testing.assert_close(value, original[name].detach())
    for k in range(1, stages):  # stage k+1 starts from the weights stage k ended with
        for name, value in spy.entering[k].items():
            torch.testing.assert_close(value, spy.leaving[k - 1][name])
    final = dict(result.pann.named_parameters())
    for name, value in spy.leaving[-1].items():
        torch.testing.assert_close(final[name].detach(), value)
    assert all(p > 1.0 for p in spy.penalties)  # inputs of magnitude ~10 are far outside
    assert not any(m.clamp_in_training for m in polyact_layers(result.pann).values())


def test_fine_tuning_a_pann_penalises_and_clamps_too(monkeypatch):
    model = _two_activation_model()
    pann, _ = convert(model, _robust_data().x_train, degree=3)
    spy = TrainingSpy(penalty_weight=1.0)
    monkeypatch.setattr(polyact.train.robust, "train_classifier", spy)
    robust_finetune(pann, _robust_data(), epochs=1, guard=False)
    assert len(spy.penalties) == 1


# ---- CKKS parameters meet the HomomorphicEncryption.org 128-bit bounds ---------------------------
# Albrecht et al., "Homomorphic Encryption Security Standard" (2018), Table 1: classical 128-bit
# security, ternary (uniform) secret: the largest log2(q) per ring dimension n. Copied literally.
HE_STANDARD_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def test_security_table_is_the_standard():
    from he_backend.eval.params import MAX_LOG_Q

    assert MAX_LOG_Q == HE_STANDARD_128


@pytest.mark.parametrize("n", sorted(HE_STANDARD_128))
def test_chains_over_the_bound_are_refused(n):
    from he_backend.eval.params import CkksParams, ParameterError

    def chain(total):  # primes of 17..60 bits summing to total
        count = max(2, -(-total // 60))
        return tuple(total // count + (i < total % count) for i in range(count))

    with pytest.raises(ParameterError, match="128-bit"):
        CkksParams(n, chain(max(HE_STANDARD_128[n] + 1, 34)), 30)
    if n >= 2048:  # 1024 admits no two primes of 17 bits
        assert CkksParams(n, chain(HE_STANDARD_128[n]), 20).log_q == HE_STANDARD_128[n]


def test_automatic_parameters_never_exceed_the_bound():
    from he_backend.eval.params import ParameterError, choose_params

    checked = 0
    for min_scale in (20, 25, 30, 40):
        for slots in (1, 4096, 8192):
            for depth in range(40):
                try:
                    p = choose_params(depth, min_scale_bits=min_scale, max_scale_bits=max(min_scale, 40), slots=slots)
                except ParameterError as exc:  # only "no ring is large enough", never an insecure chain
                    assert "levels but N = 32768" in str(exc), exc
                    continue
                assert p.log_q <= HE_STANDARD_128[p.poly_modulus_degree], p
                assert p.depth >= depth and p.scale_bits >= min_scale and p.slots >= slots
                checked += 1
    assert checked > 50


# ---- every HTTP call in the tests has a timeout -----------------------------------------------------
HTTP_CALLS = {"urlopen", "HTTPConnection", "HTTPSConnection", "create_connection"}
HTTP_MODULES = {"requests", "httpx"}


def _calls_without_timeout(source):
    """``(line, name)`` of HTTP calls with no ``timeout=`` (and no positional timeout)."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        is_http = name in HTTP_CALLS or owner in HTTP_MODULES
        if is_http and not any(k.arg == "timeout" for k in node.keywords):
            positional_timeout = {"urlopen": 2, "HTTPConnection": 2, "HTTPSConnection": 2, "create_connection": 1}
            if len(node.args) <= positional_timeout.get(name, 99):
                missing.append((node.lineno, name))
    return missing


def test_the_timeout_check_sees_calls_without_a_timeout():
    source = ("import urllib.request, http.client\nurllib.request.urlopen(u)\nurllib.request.urlopen(u, timeout=5)\n"
              "http.client.HTTPConnection(h)\nhttp.client.HTTPConnection(h, 80, 5)\nrequests.get(u)\n")
    assert _calls_without_timeout(source) == [(2, "urlopen"), (4, "HTTPConnection"), (6, "get")]


def _test_files():
    for path in sorted(p.name for p in TESTS.glob("*.py")):
        if path == "test_service.py":  # owned by helper sec, whose branch adds the timeouts (issue 15)
            yield pytest.param(path, marks=pytest.mark.xfail(strict=True, reason="timeouts come with branch sec; "
                                                             "drop this mark once it is merged"))
        else:
            yield path


@pytest.mark.parametrize("path", list(_test_files()))
def test_every_http_call_in_the_tests_has_a_timeout(path):
    missing = _calls_without_timeout((TESTS / path).read_text())
    assert not missing, f"{path}: HTTP calls without timeout= at {missing}; a misbehaving server would hang the suite"
