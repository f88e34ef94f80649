"""Conversion: activations found as modules and functions, calibrated intervals, fitted
polynomials evaluated as expected, unsupported operations, out-of-range detection, save/load."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import polyact
from polyact.activations import available_activations, get_activation
from polyact.convert import convert
from polyact.graph import LoweringError, lower
from polyact.modules import OutOfRangeError, PolyAct, polyact_layers, range_report, set_strict
from polyact.rewrite import UnsupportedOperationError
from polyact.storage import load_pann, save_pann

torch.manual_seed(0)
X = torch.randn(256, 6)


class Functional(nn.Module):
    """Activations written every way torch allows."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(6, 6) for _ in range(4))
        self.act = nn.GELU(approximate="tanh")
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = torch.sigmoid(self.b(x)) + x.relu() * 0.5
        x = F.leaky_relu(self.c(x), 0.2)
        x = self.act(self.d(x))
        return self.out(F.gelu(x) - x / 2.0)


def observed_inputs(model, x):
    """Inputs of each activation, recorded independently with forward hooks / manual code."""
    h = {}
    with torch.no_grad():
        a = model.a(x)
        h["a"] = a
        r = F.relu(a)
        b = model.b(r)
        h["b"], h["relu2"] = b, r
        s = torch.sigmoid(b) + r.relu() * 0.5
        c = model.c(s)
        h["c"] = c
        d = model.d(F.leaky_relu(c, 0.2))
        h["d"] = d
        h["gelu"] = model.act(d)
    return h


def test_module_and_functional_activations_are_all_replaced():
    model = Functional().eval()
    pann, report = convert(model, X, degree=9)
    targets = sorted(layer.target for layer in report.layers)
    assert targets == sorted(["relu", "sigmoid", "relu", "leaky_relu", "gelu_tanh", "gelu"])
    assert len(polyact_layers(pann)) == 6
    ops = {layer.op for layer in report.layers}
    assert {"F.relu", "torch.sigmoid", ".relu()", "F.leaky_relu", "nn.GELU", "F.gelu"} <= ops
    with torch.no_grad():
        close = (pann(X) - model(X)).abs().max().item()
    assert close < 0.1  # degree 9 on these ranges


def test_calibrated_interval_is_observed_range_plus_margin():
    model = Functional().eval()
    _, report = convert(model, X, degree=5, margin=0.2)
    inputs = observed_inputs(model, X)
    by_op = {layer.op: layer for layer in report.layers}
    lo, hi = inputs["a"].min().item(), inputs["a"].max().item()
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * 1.2
    assert by_op["F.relu"].interval == pytest.approx((centre - half, centre + half), rel=1e-6)
    assert by_op["F.relu"].observed == pytest.approx((lo, hi), rel=1e-6)


def test_pann_evaluates_exactly_the_fitted_polynomials():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(100, 4)
    pann, report = convert(model, x, degree=7, method="chebyshev")
    layer = polyact_layers(pann)["1"]
    poly = layer.polynomial
    assert isinstance(poly, polyact.ChebPoly) and poly.degree == 7
    with torch.no_grad():
        hidden = model[0](x).double().numpy()
        expected = poly(hidden) @ model[2].weight.double().numpy().T + model[2].bias.double().numpy()
        got = pann.double()(x.double()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # the fit itself is polyact.fit on the reported interval
    again = polyact.fit("silu", report.layers[0].interval, 7, "chebyshev")
    np.testing.assert_allclose(poly.coef, again.coef, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in available_activations() if n != "sign"])
def test_every_zoo_activation_converts(name):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 7), get_activation(name), nn.Linear(7, 3)).eval()
    x = torch.randn(200, 5)
    pann, report = convert(model, x, degree=15)
    layer = report.layers[0]
    assert layer.target == name and layer.out_of_range == 0.0
    assert layer.calibration_error <= layer.max_error * (1 + 1e-6) + 1e-9
    with torch.no_grad():
        assert torch.isfinite(pann(x)).all()


class WithSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        h = self.norm(self.fc(x))
        h = h / h.sum(1, keepdim=True)
        return F.softmax(torch.max(h, h * 2), dim=1)


def test_unsupported_operations_are_named_with_what_to_do():
    with pytest.raises(UnsupportedOperationError) as info:
        convert(WithSoftmax(), X, degree=5)
    text = str(info.value)
    assert "'norm' (nn.LayerNorm)" in text and "BatchNorm" in text
    assert "division by a tensor" in text
    assert "torch.max" in text and "average pooling" in text
    assert "F.softmax" in text and "apply it on the client" in text or "after decryption" in text


def test_maxpool_becomes_avgpool_and_can_be_refused():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3)).eval()
    x = torch.randn(64, 1, 8, 8)
    pann, report = convert(model, x, degree=15)
    assert any("MaxPool2d -> nn.AvgPool2d" in note for note in report.notes)
    assert isinstance(pann.get_submodule("2"), nn.AvgPool2d)
    with pytest.raises(UnsupportedOperationError, match="MaxPool2d"):
        convert(model, x, degree=15, maxpool="error")


def test_out_of_range_inputs_are_detected_reported_and_strict_mode_raises():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).eval()
    x = torch.randn(300, 3)
    pann, _ = convert(model, x, degree=7, margin=0.0)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pann(x)
        assert range_report(pann)["1"]["out_of_range_fraction"] == 0.0
        pann(10 * x)
    assert any("outside its interval" in str(w.message) for w in caught)
    report = range_report(pann)["1"]
    assert report["out_of_range_fraction"] > 0.1 and report["above"] > 0 and report["below"] > 0
    set_strict(pann)
    with pytest.raises(OutOfRangeError, match="recalibrate|Recalibrate"), torch.no_grad():
        pann(10 * x)


@pytest.mark.filterwarnings("ignore::polyact.modules.OutOfRangeWarning")  # a few test inputs leave the calibrated ranges
def test_save_and_load_give_identical_outputs(tmp_path, digits, digits_cnn):
    pann, _ = convert(digits_cnn, digits, degree=7, per_channel=True)
    path = tmp_path / "cnn.pann"
    save_pann(pann, path)
    again = load_pann(path)  # rebuilt from the recorded zoo factory
    with torch.no_grad():
        assert torch.equal(pann(digits.x_test), again(digits.x_test))
    explicit = load_pann(path, model=polyact.models.build_model("cnn", (1, 8, 8), 10))
    with torch.no_grad():
        assert torch.equal(pann(digits.x_test), explicit(digits.x_test))
    with pytest.raises(ValueError, match="does not match this architecture"):
        load_pann(path, model=polyact.models.build_model("mlp", (1, 8, 8), 10))
    (tmp_path / "junk.pann").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a polyact file"):
        load_pann(tmp_path / "junk.pann")


def test_per_channel_intervals_follow_each_channel(digits, digits_cnn):
    pann, report = convert(digits_cnn, digits, degree=7, per_channel=True, margin=0.0)
    layer = polyact_layers(pann)["features.2"]
    polys = layer.polynomial
    assert len(polys) == 8 and all(p.degree == 7 for p in polys)
    with torch.no_grad():
        pre = digits_cnn.features[:2](digits.calibration())
    for c, p in enumerate(polys):
        assert p.interval == pytest.approx((pre[:, c].min().item(), pre[:, c].max().item()), rel=1e-5)
    assert report.layers[0].per_channel


def test_tolerance_and_composite_precision(digits, digits_mlp):
    _, report = convert(digits_mlp, digits, tolerance=0.05)
    assert all(layer.max_error <= 0.05 for layer in report.layers)
    pann, report = convert(digits_mlp, digits, alpha=6)
    layer = report.layers[0]
    assert layer.method == "composite" and layer.alpha >= 6
    assert layer.interval[0] == -layer.interval[1]  # composite ReLU needs a symmetric interval
    assert report.depth == 1 + layer.depth + 1


def test_overrides_change_single_layers(digits, digits_cnn):
    _, report = convert(digits_cnn, digits, degree=7, overrides={"features.6": {"degree": 15, "method": "lsq"}})
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["features.2"].degree == 7 and by_name["features.6"].degree == 15
    assert by_name["features.6"].method == "lsq"
    with pytest.raises(ValueError, match="name no activation"):
        convert(digits_cnn, digits, degree=7, overrides={"classifier.9": {"degree": 3}})


@pytest.mark.parametrize("degree", [3, 7, 15, 31])
def test_report_depth_counts_linear_levels_and_polynomial_depths(digits, digits_cnn, degree):
    pann, report = convert(digits_cnn, digits, degree=degree)
    poly_depth = math.ceil(math.log2(degree + 1))
    assert report.depth == 3 + 2 * poly_depth  # conv, act, pool+conv, act, pool+fc
    assert report.poly_evals_per_sample == 8 * 64 + 16 * 16
    data = report.to_dict()
    assert data["depth"] == report.depth and len(data["layers"]) == 2
    assert "features.2" in report.table()


def test_residual_network_lowers_exactly(digits, digits_resnet):
    pann, report = convert(digits_resnet, digits, degree=7)
    graph = lower(pann, digits.input_shape)
    x = digits.x_test[:16].double()
    with torch.no_grad():
        expected = pann.double()(x).numpy()
    np.testing.assert_allclose(graph.forward(x.numpy()), expected, rtol=1e-9, atol=1e-9)
    # stem (1 + 3), two blocks of two (1 + 3) levels, head 1
    assert report.depth == graph.depth == 4 + 8 + 8 + 1


def test_square_activation_costs_one_level_when_followed_by_a_linear_layer():
    model = nn.Sequential(nn.Linear(4, 4), get_activation("square"), nn.Linear(4, 2)).eval()
    x = X[:, :4]
    pann, report = convert(model, x, degree=2)
    assert report.depth == 1 + 1 + 1
    with torch.no_grad():
        np.testing.assert_allclose(pann(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_products_of_activations_cannot_be_lowered():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)

        def forward(self, x):
            return torch.sigmoid(self.a(x)) * torch.tanh(self.b(x))

    pann, report = convert(Gated().eval(), X, degree=5)
    assert report.depth is None and any("not affine" in n for n in report.notes)
    with pytest.raises(LoweringError, match="product of two"):
        lower(pann, (6,))


class Dynamic(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, functional=False):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(6, 6), nn.Linear(6, 2), nn.ReLU()
        self.functional = functional

    def forward(self, x):
        h = self.fc1(x)
        h = F.relu(h) if self.functional else self.act(h)
        return self.fc2(h) if h.sum() > 0 else -self.fc2(h)


def test_untraceable_models_fall_back_to_module_swapping():
    pann, report = convert(Dynamic().eval(), X, degree=15)
    assert isinstance(pann.act, PolyAct)
    assert any("could not trace" in n for n in report.notes) and report.depth is None
    with pytest.raises(UnsupportedOperationError, match="F.relu"):
        convert(Dynamic(functional=True).eval(), X, degree=15)


def test_precision_is_required():
    with pytest.raises(ValueError, match="degree=, tolerance=, bits= or alpha="):
        convert(Functional(), X)
