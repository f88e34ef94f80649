"""Polynomial evaluation: schedule (depth, products), plaintext twin, and encrypted results
against numpy's Chebyshev series."""
import math

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

import polyact
from he_backend.eval.params import CkksParams, choose_params
from he_backend.eval.polyeval import PolyEvaluator
from he_backend.protocol.keys import KeyHolder
from polyact.approx.schedule import chebyshev_divide, evaluate_twin, plan_polynomial

RNG = np.random.default_rng(0)


def random_series(degree, odd=False):
    coef = RNG.normal(size=degree + 1) / np.arange(1, degree + 2)
    if odd:
        coef[0::2] = 0.0
    return coef


@pytest.mark.parametrize("degree", range(1, 130))
def test_schedule_depth_is_optimal_and_twin_is_exact(degree):
    coef = random_series(degree)
    plan = plan_polynomial(coef)
    assert plan.depth == math.ceil(math.log2(degree + 1))
    t = RNG.uniform(-1, 1, 200)
    twin = evaluate_twin(plan, t)
    np.testing.assert_allclose(twin.values, C.chebval(t, coef), rtol=1e-10, atol=1e-10)
    assert twin.levels == plan.depth
    assert (twin.ct_ct_mults, twin.pt_mults) == (plan.ct_ct_mults, plan.pt_mults)


@pytest.mark.parametrize("degree", [7, 15, 31, 63, 127])
def test_products_are_close_to_paterson_stockmeyer_not_one_per_degree(degree):
    plan = plan_polynomial(random_series(degree))
    ps = math.sqrt(2 * degree) + math.log2(degree)
    assert plan.ct_ct_mults <= 1.25 * ps
    assert plan.ct_ct_mults < (degree / 2 if degree >= 31 else degree)


def test_division_by_a_chebyshev_polynomial():
    coef = random_series(13)
    low, high = chebyshev_divide(coef, 8)
    t = np.linspace(-1, 1, 101)
    np.testing.assert_allclose(C.chebval(t, low) + C.chebval(t, [0] * 8 + [1]) * C.chebval(t, high),
                               C.chebval(t, coef), atol=1e-12)


def test_odd_polynomials_use_only_odd_and_power_of_two_basis():
    plan = plan_polynomial(random_series(31, odd=True))
    assert all(i % 2 == 1 or (i & (i - 1)) == 0 for i in plan.basis)
    assert plan.ct_ct_mults < plan_polynomial(random_series(31)).ct_ct_mults


def test_per_slot_coefficients_in_the_twin():
    coef = np.stack([random_series(9) for _ in range(50)], axis=1)  # (10, 50)
    plan = plan_polynomial(coef)
    t = RNG.uniform(-1, 1, 50)
    expected = [C.chebval(t[j], coef[:, j]) for j in range(50)]
    np.testing.assert_allclose(evaluate_twin(plan, t).values, expected, atol=1e-12)
    assert plan.depth == 4


def test_constant_polynomials_are_refused():
    with pytest.raises(ValueError, match="constant polynomial"):
        plan_polynomial([3.0, 0.0, 1e-18])


@pytest.fixture(scope="module")
def small_keys():
    return KeyHolder(CkksParams(8192, (40, 30, 30, 30, 30, 40), 30))


@pytest.mark.parametrize("degree", [1, 2, 3, 5, 7, 10, 15])
def test_encrypted_evaluation_matches_numpy_and_the_plan(small_keys, degree):
    coef = random_series(degree)
    plan = plan_polynomial(coef)
    engine = small_keys.engine
    t = RNG.uniform(-1, 1, engine.slots)
    ct = small_keys.encrypt(t)
    engine.counts.clear()
    out = PolyEvaluator(engine).evaluate(plan, ct)
    assert engine.level(ct) - engine.level(out) == plan.depth == math.ceil(math.log2(degree + 1))
    assert engine.counts["ct_ct_mul"] == plan.ct_ct_mults and engine.counts["pt_mul"] == plan.pt_mults
    assert out.scale == engine.params.scale
    error = np.abs(small_keys.decrypt(out) - C.chebval(t, coef)).max()
    assert error < 2e-4  # 30-bit scale, N = 8192


@pytest.mark.parametrize("degree", [3, 7, 15])
def test_noise_estimate_is_within_a_factor_3_of_the_measured_error(small_keys, degree):
    coef = random_series(degree)
    plan = plan_polynomial(coef, scale_bits=small_keys.params.scale_bits)
    t = RNG.uniform(-1, 1, small_keys.engine.slots)
    out = PolyEvaluator(small_keys.engine).evaluate(plan, small_keys.encrypt(t))
    error = np.abs(small_keys.decrypt(out) - C.chebval(t, coef)).max()
    p = small_keys.params
    estimate = evaluate_twin(plan, t, p.scale_bits, p.poly_modulus_degree).expected_error
    assert estimate / 3 <= error <= 3 * estimate


def test_encrypted_per_slot_coefficients(small_keys):
    engine = small_keys.engine
    slots = 64
    coef = np.stack([random_series(7) for _ in range(slots)], axis=1)
    t = RNG.uniform(-1, 1, slots)
    out = PolyEvaluator(engine).evaluate(plan_polynomial(coef), small_keys.encrypt(t))
    expected = [C.chebval(t[j], coef[:, j]) for j in range(slots)]
    np.testing.assert_allclose(small_keys.decrypt(out)[:slots], expected, atol=2e-4)


def test_too_few_levels_is_a_clear_error(small_keys):
    plan = plan_polynomial(random_series(63))  # needs 6 levels, the context has 4
    with pytest.raises(ValueError, match="needs 6 levels"):
        PolyEvaluator(small_keys.engine).evaluate(plan, small_keys.encrypt(np.zeros(4)))


@pytest.mark.slow
@pytest.mark.isolated  # CKKS memory: in another interpreter (tests/isolation.py)
@pytest.mark.parametrize("degree", [15, 31, 63])
def test_activation_polynomials_keep_20_bits_at_scale_2_40(degree):
    keys = KeyHolder(choose_params(math.ceil(math.log2(degree + 1)), min_scale_bits=40))
    assert keys.params.scale_bits == 40
    poly = polyact.fit("gelu", (-8, 8), degree)
    x = RNG.uniform(-8, 8, keys.engine.slots)
    plan = plan_polynomial(poly.coef)
    out = PolyEvaluator(keys.engine).evaluate(plan, keys.encrypt(poly.to_unit(x)))
    error = np.abs(keys.decrypt(out) - poly(x)).max()
    assert -math.log2(error) >= 20
    estimate = evaluate_twin(plan, poly.to_unit(x), keys.params.scale_bits, keys.params.poly_modulus_degree)
    assert estimate.expected_error / 3 <= error <= estimate.expected_error * 3
