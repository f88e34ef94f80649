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
from polyact.activations.registry import available_activations, get_activation
from polyact.approx.fitting import fit
from polyact.convert.pipeline import MaxPoolAveragedWarning, convert
from polyact.convert.sites import UnsupportedOperationError
from polyact.convert.storage import load_pann, save_pann
from polyact.ir.graph import LoweringError
from polyact.ir.lower import lower
from polyact.nn.poly_act import (
    OutOfRangeError,
    PolyAct,
    polyact_layers,
    range_report,
    set_strict,
)

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
    assert "F.softmax" in text and ("apply it on the client" in text or "after decryption" in text)


def test_maxpool_average_is_opt_in_measured_and_refusal_names_the_option():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3)).eval()
    x = torch.randn(64, 1, 8, 8)
    with pytest.warns(MaxPoolAveragedWarning, match=r"agreement with the original on 64 calibration inputs: \d+\.\d+%"):
        pann, report = convert(model, x, degree=15, maxpool="avg")
    assert isinstance(pann.get_submodule("2"), nn.AvgPool2d)
    with torch.no_grad():
        pooled = model[:2](x)
        agree = (model(x).argmax(1) == model[3:](F.avg_pool2d(pooled, 2)).argmax(1)).float().mean().item()
    assert any(f"{100 * agree:.2f}%" in note and "polyact train" in note for note in report.notes)
    with pytest.raises(UnsupportedOperationError, match="MaxPool2d.*maxpool='poly'"):
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


@pytest.mark.filterwarnings("ignore::polyact.nn.poly_act.OutOfRangeWarning")  # a few test inputs leave the calibrated ranges
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


def test_products_of_activations_are_refused_by_convert_and_by_lowering():
    class Gated(nn.Module):
        def __init__(self, f=torch.sigmoid, g=torch.tanh):
            super().__init__()
            self.a, self.b, self.f, self.g = nn.Linear(6, 4), nn.Linear(6, 4), f, g

        def forward(self, x):
            return self.f(self.a(x)) * self.g(self.b(x))

    with pytest.raises(UnsupportedOperationError, match=r"product 'mul' \(test_convert.py:\d+\)"):
        convert(Gated().eval(), X, degree=5)  # up front, not late in compile
    p = fit("tanh", (-4.0, 4.0), 5)
    pann = Gated(PolyAct(p), PolyAct(p)).eval()  # a PANN built by hand
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


# ---- every call site is its own activation ---------------------------------------------------
class SharedGELU(nn.Module):
    """One nn.GELU module called twice, a functional relu in a loop, an inplace ReLU reused."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
        self.loop = nn.ModuleList(nn.Linear(6, 6) for _ in range(2))
        self.act, self.relu = nn.GELU(), nn.ReLU(inplace=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.act(self.b(self.act(self.a(x))))
        for layer in self.loop:
            h = F.relu(layer(h))
        h = self.relu(self.a(h)) + h
        return self.out(self.relu(h * 3.0))


def _site_inputs(model, x):
    """Each call's input, computed by hand (independent of the rewrite)."""
    with torch.no_grad():
        first = model.a(x)
        second = model.b(F.gelu(first))
        h, loops = F.gelu(second), []
        for layer in model.loop:
            loops.append(layer(h))
            h = F.relu(loops[-1])
        third = model.a(h)
        h = F.relu(third) + h
        return {"act.0": first, "act.1": second, "relu.0": third, "relu.1": 3.0 * h}, loops


@pytest.mark.parametrize("use_fx", [True, False])
def test_each_call_of_a_shared_module_gets_its_own_interval(use_fx):
    model = SharedGELU().eval()
    x = torch.randn(300, 6)
    if not use_fx:  # module swapping cannot see functional calls: drop the loop
        model.loop = nn.ModuleList()
    pann, report = convert(model, x, degree=15, use_fx=use_fx)
    inputs, loops = _site_inputs(model, x)
    by_name = {layer.name: layer for layer in report.layers}
    for name, value in inputs.items():
        assert by_name[name].observed == pytest.approx((value.min().item(), value.max().item()), rel=1e-5), name
    if use_fx:
        loop_sites = [layer for layer in report.layers if layer.op == "F.relu"]
        assert len(loop_sites) == 2
        for layer, value in zip(loop_sites, loops):
            assert layer.observed == pytest.approx((value.min().item(), value.max().item()), rel=1e-5)
    assert len(report.layers) == 4 + (2 if use_fx else 0)
    with torch.no_grad():
        assert (pann(x) - model(x)).abs().max().item() < 0.05
    assert report.depth is not None  # both paths lower: one slot per call


def test_saved_pann_with_split_calls_reloads(tmp_path):
    model = SharedGELU().eval()
    model.loop = nn.ModuleList()
    x = torch.randn(100, 6)
    for use_fx in (True, False):
        pann, _ = convert(model, x, degree=7, use_fx=use_fx)
        save_pann(pann, tmp_path / "p.pann")
        fresh = SharedGELU()
        fresh.loop = nn.ModuleList()
        again = load_pann(tmp_path / "p.pann", model=fresh)
        with torch.no_grad():
            assert torch.equal(again(x), pann(x))


# ---- elementwise functions keep their arguments ----------------------------------------------
class Apply(nn.Module):
    """``f(x)`` for an elementwise ``f`` given as a module or a function."""

    def __init__(self, f):
        super().__init__()
        self.f = f if isinstance(f, nn.Module) else None
        self.fn = None if isinstance(f, nn.Module) else f

    def forward(self, x):
        return self.f(x) if self.f is not None else self.fn(x)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# (the model's elementwise op, its exact function with these arguments, the same function with
# default arguments (or the op without its constant part): what a dropped argument would fit)
ELEMENTWISE_CASES = {
    "LeakyReLU(0.2)": (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x), lambda x: np.where(x > 0, x, 0.01 * x)),
    "F.leaky_relu(x, 0.2)": (lambda x: F.leaky_relu(x, 0.2), lambda x: np.where(x > 0, x, 0.2 * x), lambda x: np.where(x > 0, x, 0.01 * x)),
    "ELU(alpha=0.5)": (nn.ELU(alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x)), lambda x: np.where(x > 0, x, np.expm1(x))),
    "F.elu(x, 2.0)": (lambda x: F.elu(x, 2.0), lambda x: np.where(x > 0, x, 2.0 * np.expm1(x)), lambda x: np.where(x > 0, x, np.expm1(x))),
    "CELU(alpha=2)": (nn.CELU(2.0), lambda x: np.maximum(x, 0) + np.minimum(0, 2.0 * np.expm1(x / 2.0)), lambda x: np.where(x > 0, x, np.expm1(x))),
    "Softplus(beta=2, threshold=3)": (nn.Softplus(beta=2.0, threshold=3.0), lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2), lambda x: np.log1p(np.exp(x))),
    "Hardtanh(-0.5, 2)": (nn.Hardtanh(-0.5, 2.0), lambda x: np.clip(x, -0.5, 2.0), lambda x: np.clip(x, -1.0, 1.0)),
    "ReLU6": (nn.ReLU6(), lambda x: np.clip(x, 0.0, 6.0), lambda x: np.maximum(x, 0.0)),
    "F.relu6": (F.relu6, lambda x: np.clip(x, 0.0, 6.0), lambda x: np.maximum(x, 0.0)),
    "torch.clamp(x, -0.5, 1.5)": (lambda x: torch.clamp(x, -0.5, 1.5), lambda x: np.clip(x, -0.5, 1.5), lambda x: np.clip(x, -0.5, None)),
    "x.clamp(min=0.3)": (lambda x: x.clamp(min=0.3), lambda x: np.maximum(x, 0.3), lambda x: x),
    "torch.clip(x, max=1)": (lambda x: torch.clip(x, max=1.0), lambda x: np.minimum(x, 1.0), lambda x: x),
    "GELU(approximate='tanh')": (nn.GELU(approximate="tanh"), lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), lambda x: 0.5 * x * (1 + torch.erf(torch.from_numpy(x) / math.sqrt(2)).numpy())),
    "F.gelu(x, approximate='tanh')": (lambda x: F.gelu(x, approximate="tanh"), lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), lambda x: 0.5 * x * (1 + torch.erf(torch.from_numpy(x) / math.sqrt(2)).numpy())),
    "Softsign": (nn.Softsign(), lambda x: x / (1 + np.abs(x)), lambda x: np.tanh(x)),
    "Tanhshrink": (nn.Tanhshrink(), lambda x: x - np.tanh(x), lambda x: x),
    "LogSigmoid": (nn.LogSigmoid(), lambda x: -np.log1p(np.exp(-x)), lambda x: np.minimum(x, 0.0)),
    "Hardswish": (nn.Hardswish(), lambda x: x * np.clip(x + 3, 0, 6) / 6, lambda x: x * _sig(x)),
    "Mish": (nn.Mish(), lambda x: x * np.tanh(np.log1p(np.exp(x))), lambda x: x * _sig(x)),
    "x * torch.sigmoid(x)": (lambda x: x * torch.sigmoid(x), lambda x: x * _sig(x), _sig),
    "x * F.relu6(x + 3) / 6": (lambda x: x * F.relu6(x + 3.0) / 6.0, lambda x: x * np.clip(x + 3, 0, 6) / 6, lambda x: np.clip(x + 3, 0, 6)),
}


@pytest.mark.parametrize("case", sorted(ELEMENTWISE_CASES))
def test_elementwise_functions_are_fitted_with_their_arguments(case):
    op, exact, default = ELEMENTWISE_CASES[case]
    torch.manual_seed(5)
    x = torch.linspace(-8, 8, 600).reshape(200, 3)
    grid = np.linspace(-8, 8, 4001)
    gap = np.abs(exact(grid) - default(grid)).max()  # what dropping the argument would cost
    pann, report = convert(Apply(op).eval(), x, degree=63 if "gelu" in case.lower() else 31, margin=0.0)
    (layer,) = report.layers
    assert layer.max_error < gap / 4
    with torch.no_grad():
        got = pann.double()(torch.from_numpy(grid[:3999].reshape(-1, 3))).numpy().ravel()
    assert np.abs(got - exact(grid[:3999])).max() <= layer.max_error * 1.01 + 1e-12
    assert report.depth is not None


def test_prelu_is_fitted_per_channel_with_its_learned_slopes():
    prelu = nn.PReLU(3)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.1, 0.6, -0.3]))
    x = torch.linspace(-4, 4, 600).reshape(200, 3)
    pann, report = convert(Apply(prelu).eval(), x, degree=31, margin=0.0)
    polys = polyact_layers(pann)["f"].polynomial
    for slope, poly in zip([0.1, 0.6, -0.3], polys):
        grid = np.linspace(*poly.interval, 2001)
        exact = np.where(grid >= 0, grid, slope * grid)
        assert np.abs(poly(grid) - exact).max() < 0.05  # a shared 0.25 slope would be off by >= 0.6
    assert report.layers[0].per_channel and report.layers[0].calibration_error < 0.05


# ---- max pooling by polynomials ------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=(2, 3), dilation=2, stride=1)])
def test_max_pool_tree_with_exact_abs_is_max_pooling(kwargs):
    from polyact.nn.maxpool import PolyMaxPool

    x = torch.randn(2, 3, 9, 7)
    pool = nn.MaxPool2d(**kwargs)
    torch.testing.assert_close(PolyMaxPool.like(pool)(x), pool(x))
    pool1 = nn.MaxPool1d(3, 2, 1)
    torch.testing.assert_close(PolyMaxPool.like(pool1)(x[:, :, 0]), pool1(x[:, :, 0]))


def test_poly_maxpool_is_default_stays_within_its_bound_and_lowers():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3)).eval()
    x = torch.randn(64, 1, 8, 8)
    pann, report = convert(model, x, degree=15, maxpool_alpha=6)
    pools = [layer for layer in report.layers if layer.name.startswith("2.abs")]
    assert len(pools) == 2 and all(layer.max_error <= 2**-6 * layer.interval[1] * 1.001 for layer in pools)
    (note,) = [n for n in report.notes if "polynomial max pooling" in n]
    bound = float(note.rsplit("<= ", 1)[1])
    assert bound == pytest.approx(sum(layer.max_error for layer in pools) / 2, rel=1e-3)
    with torch.no_grad():  # the exact max of the PANN's own (polynomial) activations
        pre = polyact_layers(pann)["1"](model[0](x))
        expected = model[4](F.max_pool2d(pre, 2).flatten(1))
        got = pann(x)
    assert (got - expected).abs().max().item() <= bound * model[4].weight.abs().sum(1).max().item() + 1e-5
    assert (got - model(x)).abs().max().item() > 0  # polynomials, not torch's max
    graph = lower(pann, (1, 8, 8))
    np.testing.assert_allclose(graph.forward(x[:8].double().numpy()), pann.double()(x[:8].double()).detach().numpy(), atol=1e-8)
    assert report.depth == graph.depth == 1 + 4 + 2 * (1 + pools[0].depth) + 1


class VisionLayers(nn.Module):
    """Affine layers of common vision models around one activation: grouped and depthwise,
    strided, dilated convs, AvgPool with padding and ceil_mode, Conv1d, BatchNorm1d/2d,
    Dropout, Identity, nearest and bilinear upsampling, permute/reshape, cat, inplace +=."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2)
        self.group, self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.bn, self.drop, self.skip = nn.BatchNorm2d(4), nn.Dropout(0.3), nn.Identity()
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.up, self.smooth = nn.Upsample(scale_factor=2, mode="nearest"), nn.Upsample(scale_factor=2, mode="bilinear")
        self.act = nn.SiLU()
        self.seq, self.bn1 = nn.Conv1d(8, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.head = nn.Linear(4 * 18, 3)

    def forward(self, x):
        h = self.bn(self.depthwise(self.group(self.conv(x))))
        h += self.skip(self.drop(h))
        h = self.act(torch.cat([self.pool(h), self.pool(-h)], 1))        # (N, 8, 3, 3): ceil_mode
        h = self.up(h) + self.smooth(h)                                 # (N, 8, 6, 6)
        h = self.bn1(self.seq(h.permute(0, 1, 3, 2).reshape(h.shape[0], 8, 36)))
        return self.head(torch.flatten(h[:, :, ::2], 1))


def test_vision_layers_lower_exactly():
    torch.manual_seed(6)
    model = VisionLayers().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn1.running_var.uniform_(0.5, 2.0)
    x = torch.randn(64, 2, 8, 8)
    pann, report = convert(model, x, degree=7)
    graph = lower(pann, (2, 8, 8))
    with torch.no_grad():
        expected = pann.double()(x[:8].double()).numpy()
    np.testing.assert_allclose(graph.forward(x[:8].double().numpy()), expected, rtol=1e-9, atol=1e-9)
    assert report.depth == graph.depth == 1 + 3 + 1


def test_non_polynomial_layers_are_refused_by_name():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.norm = nn.MultiheadAttention(6, 2, batch_first=True), nn.LayerNorm(6)

        def forward(self, x):
            h = self.norm(x.unsqueeze(1))
            return self.attn(h, h, h)[0].squeeze(1)

    with pytest.raises(UnsupportedOperationError) as info:
        convert(Attention().eval(), X, degree=5)
    text = str(info.value)
    assert "nn.MultiheadAttention" in text and "polynomial mixing layer" in text
    assert "nn.LayerNorm" in text and "BatchNorm" in text


def test_a_one_pass_iterator_of_batches_is_calibrated_on_every_batch(digits, digits_cnn):
    """A generator is read once: the input shape and the tracing example must not consume
    batches that calibration then never observes (the first batch holds the widest inputs)."""
    calib = digits.calibration(512)
    batches = [calib[:128] * 3, *calib[128:].split(128)]
    _, from_list = convert(digits_cnn, batches, degree=7)
    _, from_iterator = convert(digits_cnn, (b for b in batches), degree=7)
    assert [layer.observed for layer in from_iterator.layers] == [layer.observed for layer in from_list.layers]
    assert from_iterator.depth == from_list.depth is not None


def test_report_depth_false_skips_lowering(digits, digits_cnn):
    calib = digits.calibration(256)
    _, report = convert(digits_cnn, calib, degree=7, report_depth=False)
    _, lowered = convert(digits_cnn, calib, degree=7)
    assert report.depth is None and lowered.depth is not None
    assert [layer.interval for layer in report.layers] == [layer.interval for layer in lowered.layers]
