"""The literature activations (ULU, ReLU^2, EELU, Sqish, Swim, LSLU, TAAF, APALU, NEAF, RAF):
each against a numpy implementation of its paper's formula, gradchecked where learnable, fitted
by Remez within 0.5% of the LP minimax reference, trained in a digits MLP (parameters move),
converted with the learned parameters, and run encrypted in agreement with the PANN."""
import copy

import numpy as np
import pytest
import torch
from scipy.special import erf, expit
from test_fit import lp_minimax_error
from torch import nn

import he_backend
import polyact
from polyact import models
from polyact.activations.learnable import PAU
from polyact.activations.literature import LITERATURE, LSLU, RAF
from polyact.activations.registry import LEARNABLE, activation_name, get_activation
from polyact.nn.poly_act import PolyAct
from polyact.train import loop as trainer


# ---- numpy references, written from the formulas in the papers ------------------------------
def np_lslu(x, theta, omega):
    g = np.maximum(x, 0.0)
    for t, w in zip(theta, omega):
        g = np.maximum(t * g + w, 0.0)
    return g


def np_rational(x, numerator, denominator):
    p = np.polynomial.polynomial.polyval(x, numerator)
    q = 1.0 + sum(np.abs(b * x ** (k + 1)) for k, b in enumerate(denominator))
    return p / q


def np_ulu_branch(x, a):
    return 0.5 * x * (np.tanh(a * x) + 1.0)


REFERENCES = {
    "ulu": lambda x, p: np.where(x < 0, np_ulu_branch(x, p["alpha_neg"]), np_ulu_branch(x, p["alpha_pos"])),
    "relu2": lambda x, p: np.maximum(x, 0.0) ** 2,
    "eelu": lambda x, p: -x * erf(np.exp(-x)),
    "sqish": lambda x, p: p["alpha"] * x + (1 - p["alpha"]) * x / np.sqrt(
        1 + p["beta"] * np.exp(-2 * p["gamma"] * (1 - p["alpha"]) * x)),
    "swim": lambda x, p: x / 2 * (1 + p["k"] * x / np.sqrt(1 + p["k"] ** 2 * x**2)),
    "lslu": lambda x, p: np_lslu(x, p["theta"], p["omega"]),
    "taaf": lambda x, p: p["alpha"] * np.tanh(p["beta"] * x + p["gamma"]) + p["delta"],
    "apalu": lambda x, p: np.where(x >= 0, p["a"] * (x + x * expit(1.702 * x)), p["b"] * np.expm1(np.minimum(x, 0))),
    "neaf": lambda x, p: p["alpha"] * np.maximum(x, 0.0) + p["strength"] * p["beta"] * np.abs(x) ** 3,
    "raf": lambda x, p: np_rational(x, p["numerator"], p["denominator"]),
}

# Non-default values for the formula checks and the fits (constructor arguments or parameters).
SETTINGS = {
    "ulu": dict(kwargs=dict(alpha_neg=0.4, alpha_pos=2.5)),
    "relu2": dict(),
    "eelu": dict(),
    "sqish": dict(params=dict(alpha=0.2, beta=1.7, gamma=0.8)),
    "swim": dict(kwargs=dict(k=0.9)),
    "lslu": dict(params=dict(theta=[1.5, -0.7, 2.0], omega=[-1.0, 2.0, -0.5])),
    "taaf": dict(params=dict(alpha=1.3, beta=0.7, gamma=0.4, delta=-0.2)),
    "apalu": dict(params=dict(a=0.8, b=1.4)),
    "neaf": dict(params=dict(alpha=0.9, beta=0.01)),
    "raf": dict(params=dict(denominator=[0.3, 0.2, 0.05, 0.01])),  # b_k != 0: |b_k x^k| smooth in b_k
}
NAMES = list(LITERATURE)
LEARNABLE_HERE = [n for n in NAMES if n in LEARNABLE]


def configured(name):
    setting = SETTINGS[name]
    module = get_activation(name, **setting.get("kwargs", {})).double()
    with torch.no_grad():
        for pname, value in setting.get("params", {}).items():
            getattr(module, pname).copy_(torch.as_tensor(value, dtype=torch.float64))
    return module


def values(module):
    """The module's parameters and fixed constants as plain numbers, for the references."""
    out = {n: p.detach().double().numpy().copy() for n, p in module.named_parameters() if "." not in n}
    out.update({k: v for k, v in vars(module).items() if isinstance(v, float)})
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items()}


def reference(name, module):
    params = values(module)
    return lambda x: REFERENCES[name](np.asarray(x, dtype=np.float64), params)


def evaluate(module, x):
    with torch.no_grad():
        return module.double()(torch.as_tensor(x, dtype=torch.float64)).numpy()


# ---- formulas, registry, gradients ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_formula_matches_numpy_reference(name):
    module = configured(name)
    x = np.linspace(-8, 8, 1601)
    np.testing.assert_allclose(evaluate(module, x), reference(name, module)(x), rtol=1e-10, atol=1e-12)
    assert activation_name(module) == name
    extreme = torch.tensor([-1e4, -60.0, 60.0, 1e4], dtype=torch.float64, requires_grad=True)
    y = module(extreme)
    (grad,) = torch.autograd.grad(y.sum(), extreme)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()  # computed stably


def test_defaults_are_the_papers_or_documented():
    x = np.linspace(-6, 6, 241)
    np.testing.assert_allclose(evaluate(get_activation("lslu"), x), np.maximum(x, 0))  # theta=1, omega=0
    np.testing.assert_allclose(evaluate(get_activation("neaf"), x), np.maximum(x, 0))  # beta=0 starts at ReLU
    np.testing.assert_allclose(evaluate(get_activation("taaf"), x), np.tanh(x))  # identity transform
    # Swim as the authors' TD3.py new() writes it: x * ((0.5 * x / sqrt(1 + (0.5 x)^2)) + 1) / 2.
    np.testing.assert_allclose(evaluate(get_activation("swim"), x), x * (0.5 * x / np.sqrt(1 + (0.5 * x) ** 2) + 1) / 2)
    assert list(get_activation("swim").parameters()) == []  # nothing trained in the authors' code
    np.testing.assert_allclose(evaluate(get_activation("ulu"), x), evaluate(get_activation("aulu"), x))
    # RAF is PAU's function family (version "A"), started near GELU instead of leaky ReLU.
    raf = get_activation("raf")
    assert isinstance(raf, PAU) and raf.numerator.numel() == 6 and raf.denominator.numel() == 4
    gelu = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    inside = np.abs(x) <= 3
    assert np.abs(evaluate(raf, x) - gelu)[inside].max() < 0.01
    assert np.abs(evaluate(get_activation("pau"), x) - gelu)[inside].max() > 0.05
    assert [n for n, _ in get_activation("lslu").named_parameters()] == ["theta", "omega"]


def test_lslu_kinks_are_where_the_slope_changes():
    module = configured("lslu")
    x = np.linspace(-5, 5, 200001)
    y = reference("lslu", module)(x)
    slope_changes = x[1:-1][np.abs(np.diff(y, 2)) > 1e-9]
    for kink in slope_changes:
        assert min(abs(kink - b) for b in module.breakpoints) < 1e-4


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="alpha > 0"):
        get_activation("ulu", alpha_neg=0.0)
    with pytest.raises(ValueError, match="beta > 0"):
        get_activation("sqish", beta=-1.0)
    with pytest.raises(ValueError, match="num_activations >= 1"):
        LSLU(0)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        get_activation("taaf", inner="nope")
    with pytest.raises(ValueError, match="inner activation must be fixed, but 'aulu' has parameters"):
        get_activation("taaf", inner="aulu")


def test_taaf_is_one_activation_site_with_and_without_fx():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), get_activation("taaf", inner="sigmoid"), nn.Linear(7, 3)).eval()
    x = torch.randn(100, 5)
    for use_fx in (True, False):
        _, report = polyact.convert(model, x, degree=9, use_fx=use_fx)
        assert [(layer.name, layer.target) for layer in report.layers] == [("1", "taaf")]
    with pytest.raises(ValueError, match="unknown PAU initialisation"):
        RAF(init="swish")


@pytest.mark.parametrize("name", LEARNABLE_HERE)
def test_gradcheck(name):
    module = configured(name)
    x = torch.tensor([-2.7, -1.1, -0.45, 0.35, 0.9, 1.7, 3.4], dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]
    assert params, f"{name} has no learnable parameters"

    def func(x, *vals):
        return torch.func.functional_call(module, dict(zip(names, vals)), (x,))

    assert torch.autograd.gradcheck(func, (x, *params), eps=1e-6, atol=1e-5)


# ---- minimax fits -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_remez_is_within_half_a_percent_of_the_lp_minimax(name):
    module = configured(name)
    degree = 12
    poly = polyact.fit(module, (-8, 8), degree)
    lp = lp_minimax_error(module, (-8, 8), degree)
    assert lp * (1 - 1e-6) <= poly.max_error <= lp * 1.005 + 1e-13
    x = np.linspace(-8, 8, 4001)
    assert np.abs(poly(x) - reference(name, module)(x)).max() <= poly.max_error * (1 + 1e-9) + 1e-12


# ---- training, conversion with the learned parameters, encryption ------------------------------
@pytest.fixture(scope="module")
def trained(digits):
    """One small digits MLP per activation, trained 4 epochs; with the initial activation.
    One thread: tiny models train faster than with threads competing for a loaded machine."""
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in NAMES:
            torch.manual_seed(0)
            model = models.build_model("mlp", digits.input_shape, digits.num_classes, name, hidden=(16,))
            initial = copy.deepcopy(model.layers[2])
            history = trainer.train_classifier(model, digits, epochs=4, lr=1e-2, seed=0)
            out[name] = (model, initial, history)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_trains_in_a_digits_mlp_and_learnable_parameters_move(trained, name):
    model, initial, history = trained[name]
    assert history.test_accuracy[-1] > 80.0
    if name in LEARNABLE:
        moved = [(n, (p - dict(initial.named_parameters())[n]).abs().max().item())
                 for n, p in model.layers[2].named_parameters()]
        assert max(m for _, m in moved) > 0.05, moved


@pytest.fixture(scope="module")
def converted(trained, digits):
    return {name: polyact.convert(model, digits, degree=31) for name, (model, _, _) in trained.items()}


@pytest.mark.parametrize("name", NAMES)
def test_conversion_fits_the_learned_function(trained, converted, name):
    model, initial, _ = trained[name]
    pann, report = converted[name]
    layer = report.layers[0]
    assert layer.target == name and layer.degree == 31
    poly = next(m for m in pann.modules() if isinstance(m, PolyAct))
    x = np.linspace(*layer.interval, 4001)
    approx = evaluate(poly, x)
    learned = reference(name, model.layers[2])(x)
    err = np.abs(approx - learned).max()
    assert err <= layer.max_error * (1 + 1e-6) + 1e-9
    if name in LEARNABLE:  # the fit would be caught using the initial parameters instead
        assert np.abs(approx - reference(name, initial)(x)).max() > 2 * err


@pytest.fixture(scope="module")
def encrypted_inputs(trained, digits):
    """Degree-7 PANNs of all the MLPs share one CKKS parameter set and layout, so one key set,
    one public context and one encryption of the inputs serve every activation."""
    panns = {name: polyact.convert(model, digits, degree=7)[0].double().eval()
             for name, (model, _, _) in trained.items()}
    plans = {name: he_backend.compile(pann, digits.input_shape, packing="batch") for name, pann in panns.items()}
    first = plans[NAMES[0]]
    assert all(p.params == first.params and p.rotations == first.rotations for p in plans.values())
    client = first.client()
    x = digits.x_test[:16].numpy()
    return panns, plans, client.keys, client.public_context(), client.encrypt(x), x


@pytest.mark.slow
@pytest.mark.isolated  # CKKS memory: in another interpreter (tests/isolation.py)
@pytest.mark.parametrize("name", NAMES)
def test_encrypted_run_agrees_with_the_pann(encrypted_inputs, name):
    panns, plans, keys, public, ciphertext, x = encrypted_inputs
    client = he_backend.Client(plans[name], keys=keys)
    server = he_backend.Server.from_bytes(plans[name].to_bytes(), public)
    out = client.decrypt(server.run(ciphertext))
    with torch.no_grad():
        ref = panns[name](torch.as_tensor(x, dtype=torch.float64)).numpy()
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() < 1e-3 * np.abs(ref).max()
