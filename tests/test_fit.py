"""Fitting: Remez against an LP minimax reference, known minimax errors, equioscillation,
Chebyshev interpolation and weighted least squares against numpy, composite sign/ReLU."""
import math
import warnings

import numpy as np
import pytest
import torch
from numpy.polynomial import chebyshev as npcheb
from scipy.optimize import linprog

import polyact
from polyact.approx.composite import _chain_error, optimal_sign_degrees
from polyact.approx.fitting import fit, fit_to_tolerance
from polyact.approx.targets import as_target

BERNSTEIN = 0.2801694990238691  # lim n E_n(|x|) on [-1, 1] (Varga & Carpenter)


def lp_minimax_error(fn, interval, degree, points=3001):
    """Discrete minimax by linear programming: min E s.t. |f(x_i) - p(x_i)| <= E on a grid.
    A lower bound of the true minimax error, converging to it as the grid refines."""
    a, b = interval
    target = as_target(fn)
    kinks = [(2 * p - a - b) / (b - a) for p in target.breakpoints if a < p < b]
    t = np.unique(np.concatenate([np.linspace(-1, 1, points), np.cos(np.pi * np.arange(points) / (points - 1)), kinks]))
    f = target((a + b) / 2 + (b - a) / 2 * t)
    v = npcheb.chebvander(t, degree)
    ones = np.ones((t.size, 1))
    a_ub = np.vstack([np.hstack([v, -ones]), np.hstack([-v, -ones])])
    b_ub = np.concatenate([f, -f])
    cost = np.zeros(degree + 2)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (degree + 1) + [(0, None)], method="highs")
    assert res.status == 0
    return res.x[-1]


def alternation_count(poly, fn, rel=1e-3):
    """Number of alternating-sign points where |error| is within ``rel`` of its maximum,
    counted independently of the Remez reference on a fine grid."""
    a, b = poly.interval
    x = np.unique(np.concatenate([np.linspace(a, b, 400001), [0.0] if a < 0 < b else []]))
    e = as_target(fn)(x) - poly(x)
    big = np.abs(e) >= (1 - rel) * np.abs(e).max()
    signs = np.sign(e[big])
    return 1 + int(np.count_nonzero(np.diff(signs) != 0))


CASES = [
    ("relu", (-1, 1)),
    ("gelu", (-6, 6)),
    ("silu", (-8, 8)),
    ("sigmoid", (-10, 10)),
    ("tanh", (-4, 4)),
    ("hardswish", (-5, 5)),
    ("leaky_relu", (-3, 3)),
    ("elu", (-4, 2)),
]


@pytest.mark.parametrize("name, interval", CASES)
@pytest.mark.parametrize("degree", [3, 8, 13])
def test_remez_matches_lp_minimax_reference(name, interval, degree):
    poly = fit(name, interval, degree, "minimax")
    reference = lp_minimax_error(name, interval, degree)
    # The LP on a grid is a lower bound of the true minimax error; Remez certifies an upper one.
    assert poly.max_error >= reference * (1 - 1e-6)
    assert poly.max_error <= reference * 1.005 + 1e-13


@pytest.mark.parametrize("degree, expected", [(14, 0.00995), (15, 0.00995)])
def test_relu_minimax_error_known_value(degree, expected):
    poly = fit("relu", (-1, 1), degree)
    assert poly.max_error == pytest.approx(expected, rel=5e-3)


@pytest.mark.parametrize("degree", [30, 31])
def test_relu_degree_30_matches_lp_and_bernstein(degree):
    poly = fit("relu", (-1, 1), degree)
    assert poly.max_error == pytest.approx(lp_minimax_error("relu", (-1, 1), degree, 6001), rel=5e-3)
    # relu = (x + |x|) / 2, and n E_n(|x|) -> Bernstein's constant.
    assert 2 * 30 * poly.max_error == pytest.approx(BERNSTEIN, rel=5e-3)


@pytest.mark.parametrize("degree", [64, 128])
def test_abs_follows_bernstein_asymptotics(degree):
    poly = fit(np.abs, (-1, 1), degree)
    assert degree * poly.max_error == pytest.approx(BERNSTEIN, rel=5e-3)


@pytest.mark.parametrize("name, interval, degree", [
    ("gelu", (-8, 8), 15),
    ("relu", (-1, 1), 15),
    ("sigmoid", (-6, 6), 9),
    ("hardswish", (-6, 6), 20),
])
def test_minimax_error_equioscillates(name, interval, degree):
    poly = fit(name, interval, degree)
    assert alternation_count(poly, name) >= degree + 2


@pytest.mark.parametrize("name", ["relu", "abs", "leaky_relu", "hardswish", "pwlu"])
@pytest.mark.parametrize("degree", [1, 31, 127])
def test_nonsmooth_targets_converge_on_wide_intervals(name, degree):
    target = polyact.get_activation("pwlu", bounds=(-60.0, 40.0)) if name == "pwlu" else name
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # fit warns when Remez does not converge
        poly = fit(target, (-100, 100), degree)
    assert np.isfinite(poly.max_error)
    if degree <= 31:
        assert poly.max_error <= lp_minimax_error(target, (-100, 100), degree) * 1.005
    else:
        assert alternation_count(poly, target) >= degree + 2


def test_chebyshev_interpolation_matches_numpy_and_never_beats_minimax():
    for name, interval in CASES:
        a, b = interval
        target = as_target(name)
        poly = fit(name, interval, 11, "chebyshev")
        expected = npcheb.chebinterpolate(lambda t: target((a + b) / 2 + (b - a) / 2 * t), 11)
        np.testing.assert_allclose(poly.coef, expected, rtol=1e-10, atol=1e-12)
        nodes = np.cos(np.pi * (np.arange(12) + 0.5) / 12)
        x = (a + b) / 2 + (b - a) / 2 * nodes
        np.testing.assert_allclose(poly(x), target(x), atol=1e-10)
        assert poly.max_error >= fit(name, interval, 11).max_error * (1 - 1e-9)


def test_unweighted_lsq_equals_numpy_least_squares():
    poly = fit("gelu", (-4, 4), 9, "lsq")
    t = np.linspace(-1, 1, 4001)
    expected = npcheb.chebfit(t, as_target("gelu")(4 * t), 9)
    np.testing.assert_allclose(poly.coef, expected, rtol=1e-8, atol=1e-10)


def test_density_weighted_lsq_is_accurate_where_inputs_fall():
    rng = np.random.default_rng(1)
    samples = np.clip(rng.normal(0.0, 1.0, 50_000), -8, 8)
    weighted = fit("gelu", (-8, 8), 7, "lsq", weights=samples)
    minimax = fit("gelu", (-8, 8), 7, "minimax")
    x = samples[:5000]
    err_w = np.sqrt(np.mean((weighted(x) - as_target("gelu")(x)) ** 2))
    err_m = np.sqrt(np.mean((minimax(x) - as_target("gelu")(x)) ** 2))
    assert err_w < 0.5 * err_m  # much better on the data ...
    assert weighted.max_error > minimax.max_error  # ... at the price of the worst case
    counts, edges = np.histogram(samples, bins=128, range=(-8, 8))
    from_histogram = fit("gelu", (-8, 8), 7, "lsq", weights=(counts, edges))
    density = fit("gelu", (-8, 8), 7, "lsq", weights=lambda v: np.exp(-v * v / 2))
    np.testing.assert_allclose(from_histogram(x), density(x), atol=0.05)


def test_reference_composite_sequences_reach_their_precision():
    # Lee et al.'s degree sequences; the quoted alphas hold with gap eps = 2^(4 - alpha).
    for degrees, alpha in [((15, 15), 9), ((7, 15, 27), 12), ((15, 15, 27), 13)]:
        achieved = -math.log2(_chain_error(degrees, 2.0 ** (4 - alpha)))
        assert alpha <= achieved <= alpha + 1
        found = optimal_sign_degrees(alpha, 2.0 ** (4 - alpha))
        depth = sum(polyact.chebyshev_depth(d) for d in found)
        assert depth <= sum(polyact.chebyshev_depth(d) for d in degrees)


@pytest.mark.parametrize("alpha", [4, 7, 10, pytest.param(12, marks=pytest.mark.slow), pytest.param(14, marks=pytest.mark.slow)])
def test_composite_sign_and_relu_reach_alpha(alpha):
    sign = fit("sign", (-1, 1), method="composite", alpha=alpha)
    x = np.concatenate([np.geomspace(2.0**-alpha, 1, 20001), np.linspace(2.0**-alpha, 1, 20001)])
    assert np.abs(sign(x) - 1).max() <= 2.0**-alpha
    np.testing.assert_allclose(sign(-x), -sign(x), atol=1e-12)  # odd
    bound = 6.0
    relu = fit("relu", (-bound, bound), method="composite", alpha=alpha)
    y = np.linspace(-bound, bound, 100001)
    assert np.abs(relu(y) - np.maximum(y, 0)).max() <= relu.max_error * (1 + 1e-9)
    assert relu.max_error <= 1.01 * bound * 2.0**-alpha
    assert relu.depth == sum(s.depth for s in relu.stages) + 1


def test_fit_to_tolerance_returns_the_lowest_sufficient_degree():
    poly = fit_to_tolerance("silu", (-6, 6), 1e-3)
    assert poly.max_error <= 1e-3
    assert fit("silu", (-6, 6), poly.degree - 1).max_error > 1e-3
    cheb = fit_to_tolerance("tanh", (-3, 3), 1e-4, method="chebyshev")
    assert cheb.max_error <= 1e-4
    assert all(fit("tanh", (-3, 3), d, "chebyshev").max_error > 1e-4 for d in range(cheb.degree))
    comp = fit_to_tolerance("relu", (-4, 4), 5e-3, method="composite")
    assert comp.max_error <= 5e-3
    with pytest.raises(ValueError, match="reaches only"):
        fit_to_tolerance("relu", (-1, 1), 1e-6, max_degree=31)


def test_a_trained_module_is_fitted_with_its_current_parameters():
    module = polyact.get_activation("aulu")
    with torch.no_grad():
        module.beta_neg.fill_(0.3)
        module.beta_pos.fill_(1.7)
    poly = fit(module, (-4, 4), 20)
    x = np.linspace(-4, 4, 101)
    with torch.no_grad():
        exact = module(torch.tensor(x)).numpy()
    assert np.abs(poly(x) - exact).max() <= poly.max_error * (1 + 1e-9)
    with torch.no_grad():
        default = polyact.get_activation("aulu")(torch.tensor(x)).numpy()
    assert np.abs(poly(x) - default).max() > 20 * poly.max_error


def test_callables_on_numpy_or_torch_are_accepted():
    by_torch = fit(torch.relu, (-2, 2), 9)
    by_name = fit("relu", (-2, 2), 9)
    # Without known kinks the Remez search stops at another point within its tolerance.
    assert by_torch.max_error == pytest.approx(by_name.max_error, rel=1e-5)
    np.testing.assert_allclose(by_torch.coef, by_name.coef, atol=1e-6)
    assert by_torch.target == "relu"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fit("relu", (1, -1), 5), "a < b"),
        (lambda: fit("relu", (-1, 1), -1), "between 0"),
        (lambda: fit("relu", (-1, 1), 2.5), "integer"),
        (lambda: fit(lambda x: 1.0 / (x - 0.25), (-1, 1), 5), "not finite"),
        (lambda: fit("swishy", (-1, 1), 5), "unknown activation"),
        (lambda: fit("relu", (-1, 1), 5, method="spline"), "unknown method"),
        (lambda: fit("gelu", (-1, 1), method="composite", alpha=5), "sign, relu or abs"),
        (lambda: fit("relu", (-1, 1)), "needs a degree"),
        (lambda: fit("relu", (-1, 1), method="composite"), "alpha"),
        (lambda: fit("gelu", (-1, 1), 5, "lsq", weights=lambda x: -np.ones_like(x)), "non-negative"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
