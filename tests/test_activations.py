"""The activation zoo: formulas against independent numpy implementations, gradients, registry."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.integrate import solve_ivp
from scipy.special import expit

import polyact
from polyact.activations.learnable import (
    AGLU,
    APA,
    AULU,
    PAU,
    PWLU,
    XIELU,
    DiTAC,
    cpa_integrate,
)
from polyact.activations.registry import (
    activation_name,
    available_activations,
    get_activation,
)

REQUIRED = [
    "relu", "leaky_relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "elu", "selu",
    "softplus", "mish", "hardswish", "hardsigmoid", "square",
    "aulu", "xielu", "apa", "aglu", "pwlu", "pau", "ditac",
]


def x64(values):
    return torch.tensor(values, dtype=torch.float64)


def test_registry_has_the_whole_zoo_and_names_round_trip():
    assert set(REQUIRED) <= set(available_activations())
    for name in REQUIRED:
        module = get_activation(name)
        assert isinstance(module, torch.nn.Module)
        assert activation_name(module) == name
    with pytest.raises(ValueError, match="unknown activation 'swish2'.*relu"):
        get_activation("swish2")


@pytest.mark.parametrize("name, reference", [
    ("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu), ("sigmoid", torch.sigmoid),
    ("tanh", torch.tanh), ("softplus", F.softplus), ("mish", F.mish), ("hardswish", F.hardswish),
    ("square", lambda x: x**2), ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
])
def test_fixed_activations_are_the_torch_functions(name, reference):
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(get_activation(name)(x), reference(x))


def test_aulu_formula():
    module = AULU(beta_neg=0.5, beta_pos=1.5).double()
    x = np.linspace(-5, 5, 201)
    a = np.where(x < 0, 0.25, 2.25)
    expected = 0.5 * x * (np.tanh(a * x) + 1)
    np.testing.assert_allclose(module(x64(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_xielu_formula_and_initial_alphas():
    module = XIELU().double()
    assert F.softplus(module.p).item() == pytest.approx(0.8)
    assert 0.5 + F.softplus(module.n).item() == pytest.approx(0.8)
    x = np.linspace(-6, 6, 241)
    ap = math.log1p(math.exp(module.p.item()))  # softplus of the stored parameters
    an = 0.5 + math.log1p(math.exp(module.n.item()))
    beta, eps = 0.5, -1e-6
    expected = np.where(x > 0, ap * x**2 + beta * x, an * np.expm1(np.minimum(x, eps)) - an * x + beta * x)
    np.testing.assert_allclose(module(x64(x)).detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_apa_and_aglu_formulas_and_special_cases():
    apa, aglu = APA(1.7, 0.6).double(), AGLU(1.7, 0.6).double()
    kappa, lam = apa.kappa.item(), apa.lam.item()
    z = np.linspace(-8, 8, 161)
    expected = (lam * np.exp(-kappa * z) + 1) ** (-1 / lam)
    np.testing.assert_allclose(apa(x64(z)).detach().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(aglu(x64(z)).detach().numpy(), z * expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(APA()(x64(z)).detach().numpy(), expit(z), rtol=1e-12)
    torch.testing.assert_close(AGLU()(x64(z)), F.silu(x64(z)))
    extreme = APA(2.0, 0.3)(x64([-1e4, -50.0, 50.0, 1e4]))
    assert torch.isfinite(extreme).all()  # computed stably


def test_pwlu_starts_as_relu_and_interpolates_linearly():
    module = PWLU(num_intervals=8, bounds=(-2.0, 2.0))
    x = torch.linspace(-5, 5, 401, dtype=torch.float64)
    torch.testing.assert_close(module(x), torch.relu(x).to(module(x).dtype))
    with torch.no_grad():
        module.heights.copy_(torch.randn(9))
        module.slope_left.fill_(-0.3)
        module.slope_right.fill_(2.0)
    knots = np.linspace(-2, 2, 9)
    h = module.heights.detach().numpy()
    xs = x.numpy()
    expected = np.interp(xs, knots, h)
    expected = np.where(xs < -2, h[0] - 0.3 * (xs + 2), expected)
    expected = np.where(xs > 2, h[-1] + 2.0 * (xs - 2), expected)
    np.testing.assert_allclose(module(x).detach().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_pwlu_initialises_bounds_from_running_statistics():
    torch.manual_seed(0)
    module = PWLU(stat_batches=200, momentum=0.05)
    module.train()
    for _ in range(200):
        x = torch.randn(4096) * 2.0 + 1.0
        assert torch.equal(module(x), torch.relu(x))  # plain ReLU during the statistics phase
    assert module.left.item() == pytest.approx(1.0 - 6.0, abs=0.3)
    assert module.right.item() == pytest.approx(1.0 + 6.0, abs=0.3)
    module.eval()
    knots = np.linspace(module.left.item(), module.right.item(), 17)
    x = np.linspace(-8, 10, 37)
    expected = np.where(x > knots[-1], x, np.interp(x, knots, np.maximum(knots, 0)))  # ReLU at the knots
    np.testing.assert_allclose(module(torch.tensor(x, dtype=torch.float32)).detach().numpy(), expected, atol=1e-5)


def test_pau_formula_and_leaky_relu_initialisation():
    module = PAU().double()
    a = module.numerator.detach().numpy().astype(float)
    b = module.denominator.detach().numpy().astype(float)
    x = np.linspace(-3, 3, 301)
    p = np.polynomial.polynomial.polyval(x, a)
    q = 1 + sum(np.abs(b[k - 1] * x**k) for k in range(1, 5))
    np.testing.assert_allclose(module(x64(x)).detach().numpy(), p / q, rtol=1e-10, atol=1e-12)
    assert np.abs(p / q - np.where(x > 0, x, 0.01 * x)).max() < 0.1


def test_ditac_flow_matches_numerical_ode_integration():
    theta = torch.tensor([0.8, -0.5, 1.2, 0.3, -0.9], dtype=torch.float64)
    a, b = -3.0, 3.0
    knots = np.linspace(a, b, 7)
    v_knots = np.concatenate([[0.0], theta.numpy(), [0.0]])
    x0 = np.linspace(a, b, 61)
    solution = solve_ivp(lambda t, y: np.interp(y, knots, v_knots), (0, 1), x0, rtol=1e-11, atol=1e-12)
    flow = cpa_integrate(x64(x0), theta, (a, b)).numpy()
    np.testing.assert_allclose(flow, solution.y[:, -1], atol=1e-7)
    assert np.all(np.diff(flow) > 0)  # a diffeomorphism is increasing
    assert flow[0] == pytest.approx(a) and flow[-1] == pytest.approx(b)


def test_ditac_is_gelu_at_zero_velocity_and_outside_its_interval():
    module = DiTAC((-3.0, 3.0))
    x = torch.linspace(-6, 6, 121, dtype=torch.float64)
    torch.testing.assert_close(module(x), F.gelu(x))
    with torch.no_grad():
        module.theta.copy_(torch.randn(7))
    outside = torch.tensor([-6.0, -4.0, 3.5, 5.0], dtype=torch.float64)
    torch.testing.assert_close(module(outside), F.gelu(outside))
    edge = torch.tensor([-3.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(module(edge), F.gelu(edge))  # continuous at the interval ends


LEARNABLE = [
    (AULU, dict(beta_neg=0.7, beta_pos=1.3)),
    (XIELU, {}),
    (APA, dict(kappa=1.3, lam=0.7)),
    (AGLU, dict(kappa=0.8, lam=1.4)),
    (PWLU, dict(num_intervals=6, bounds=(-2.0, 2.0))),
    (PAU, {}),
    (DiTAC, dict(interval=(-3.0, 3.0), num_cells=6)),
]


@pytest.mark.parametrize("cls, kwargs", LEARNABLE, ids=[c.__name__ for c, _ in LEARNABLE])
def test_learnable_activations_pass_gradcheck(cls, kwargs):
    torch.manual_seed(3)
    module = cls(**kwargs).double()
    if isinstance(module, DiTAC):
        with torch.no_grad():
            module.theta.copy_(torch.randn(5, dtype=torch.float64))
    # Inputs away from kinks (0 and PWLU knots), where the functions are smooth.
    x = torch.tensor([-2.7, -1.1, -0.45, 0.35, 0.9, 2.2, 3.4], dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]

    def func(x, *values):
        state = dict(zip(names, values))
        return torch.func.functional_call(module, state, (x,))

    assert torch.autograd.gradcheck(func, (x, *params), eps=1e-6, atol=1e-5)
    out = module(x).sum()
    grads = torch.autograd.grad(out, params, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", REQUIRED)
def test_every_zoo_activation_is_a_fitting_target(name):
    poly = polyact.fit(name, (-4, 4), 9)
    assert math.isfinite(poly.max_error)
    x = np.linspace(-4, 4, 33)
    with torch.no_grad():
        exact = get_activation(name).double().eval()(torch.tensor(x)).numpy()
    assert np.abs(poly(x) - exact).max() <= poly.max_error * (1 + 1e-9) + 1e-12
