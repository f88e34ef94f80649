"""ChebPoly / CompositePoly: evaluation against numpy's Chebyshev series, gradients, JSON."""
import json
import math

import numpy as np
import pytest
import torch
from numpy.polynomial import Chebyshev

from polyact.approx.polynomials import (
    ChebPoly,
    CompositePoly,
    chebval_torch,
    chebyshev_depth,
    poly_from_dict,
    poly_from_json,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("degree", [0, 1, 2, 7, 31, 64])
def test_numpy_evaluation_matches_numpy_chebyshev_series(degree):
    coef = RNG.normal(size=degree + 1)
    poly = ChebPoly(coef, (-3.0, 5.0))
    x = RNG.uniform(-3, 5, size=(4, 50))
    expected = Chebyshev(coef, domain=[-3, 5])(x)
    np.testing.assert_allclose(poly(x), expected, rtol=1e-12, atol=1e-12)


def test_torch_evaluation_matches_numpy_on_any_shape():
    coef = RNG.normal(size=16)
    poly = ChebPoly(coef, (-2.0, 2.0))
    x = torch.empty(2, 3, 4, 5, dtype=torch.float64).uniform_(-2, 2)
    np.testing.assert_allclose(poly(x).numpy(), poly(x.numpy()), rtol=1e-12, atol=1e-12)
    assert poly(x.float()).dtype == torch.float32


def test_torch_evaluation_is_differentiable_in_input_and_coefficients():
    t = torch.empty(20, dtype=torch.float64).uniform_(-1, 1).requires_grad_()
    coef = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(chebval_torch, (t, coef))
    assert torch.autograd.gradgradcheck(chebval_torch, (t, coef))


def test_per_channel_coefficients_broadcast_over_the_channel_axis():
    x = torch.empty(2, 3, 4, 4, dtype=torch.float64).uniform_(-1, 1)
    coef = torch.randn(6, 3, 1, 1, dtype=torch.float64)
    out = chebval_torch(x, coef)
    for c in range(3):
        expected = np.polynomial.chebyshev.chebval(x[:, c].numpy(), coef[:, c, 0, 0].numpy())
        np.testing.assert_allclose(out[:, c].numpy(), expected, rtol=1e-12)


def test_monomial_coefficients_reproduce_the_polynomial():
    coef = RNG.normal(size=6)
    poly = ChebPoly(coef, (-4.0, 2.0))
    x = np.linspace(-4, 2, 101)
    mono = poly.to_monomial()
    assert mono.shape == (6,)
    np.testing.assert_allclose(np.polynomial.polynomial.polyval(x, mono), poly(x), rtol=1e-10, atol=1e-10)


def test_depth_is_ceil_log2_of_degree_plus_one():
    for degree in range(0, 300):
        assert chebyshev_depth(degree) == math.ceil(math.log2(degree + 1))
    assert ChebPoly(np.ones(16)).depth == 4
    assert ChebPoly(np.ones(17)).depth == 5


def test_affine_output_scales_and_shifts():
    poly = ChebPoly(RNG.normal(size=5), (-1.0, 3.0))
    x = np.linspace(-1, 3, 17)
    np.testing.assert_allclose(poly.affine_output(2.5, -1.0)(x), 2.5 * poly(x) - 1.0, rtol=1e-12)


def test_json_round_trip_is_exact():
    poly = ChebPoly(RNG.normal(size=12), (-7.5, 2.25), max_error=1.5e-3, method="minimax", target="gelu")
    again = ChebPoly.from_json(poly.to_json())
    assert np.array_equal(again.coef, poly.coef)
    assert again.interval == poly.interval
    assert (again.max_error, again.method, again.target) == (1.5e-3, "minimax", "gelu")
    data = json.loads(poly.to_json())
    assert data["degree"] == 11 and data["depth"] == 4


def test_composite_evaluates_the_composition_and_counts_depth():
    inner = ChebPoly([0.0, 1.2, 0.0, -0.2], (-2.0, 2.0))
    outer = ChebPoly([0.0, 0.9, 0.0, 0.1], (-1.5, 1.5))
    x = np.linspace(-2, 2, 41)
    plain = CompositePoly([inner, outer])
    np.testing.assert_allclose(plain(x), outer(inner(x)))
    relu = CompositePoly([inner, outer], product="relu")
    np.testing.assert_allclose(relu(x), x * (1 + outer(inner(x))) / 2)
    absolute = CompositePoly([inner, outer], product="abs")
    np.testing.assert_allclose(absolute(x), x * outer(inner(x)))
    assert plain.depth == 4 and relu.depth == 5
    assert relu.degree == 10
    xt = torch.tensor(x)
    np.testing.assert_allclose(relu(xt).numpy(), relu(x))


def test_composite_json_round_trip_and_dispatch():
    stages = [ChebPoly([0, 1.1, 0, -0.1], (-1, 1)), ChebPoly([0, 1.0, 0, 0.05], (-1.2, 1.2))]
    poly = CompositePoly(stages, product="relu", max_error=0.01, sign_error=2**-6, target="relu")
    again = poly_from_json(poly.to_json())
    assert isinstance(again, CompositePoly)
    assert again.product == "relu" and again.alpha == pytest.approx(6.0)
    np.testing.assert_array_equal(again(np.linspace(-1, 1, 9)), poly(np.linspace(-1, 1, 9)))
    assert isinstance(poly_from_dict(ChebPoly([1.0, 2.0]).to_dict()), ChebPoly)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coef=[], interval=(0, 1)), "at least one coefficient"),
        (dict(coef=[1.0, np.nan], interval=(0, 1)), "finite"),
        (dict(coef=[1.0], interval=(1, 1)), "a < b"),
        (dict(coef=[1.0], interval=(0, np.inf)), "finite"),
        (dict(coef=[1.0], interval=(0,)), "pair"),
    ],
)
def test_invalid_polynomials_are_rejected_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChebPoly(**kwargs)


def test_unknown_polynomial_type_is_rejected():
    with pytest.raises(ValueError, match="unknown polynomial type"):
        poly_from_dict({"type": "spline"})
    with pytest.raises(ValueError, match="product"):
        CompositePoly([ChebPoly([1.0])], product="gelu")
