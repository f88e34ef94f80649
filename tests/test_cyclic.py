"""Periodic affine maps (he_backend.eval.cyclic): diagonals modulo the input period and a
fold, checked slot by slot against ``W @ x`` with numpy rolls standing in for rotations."""
import numpy as np
import pytest
import scipy.sparse as sp

from he_backend.eval.cyclic import (
    cyclic_diagonals,
    cyclic_offsets,
    fold_steps,
    fold_width,
    periodic,
)

SLOTS = 256


def _rot(v: np.ndarray, k: int) -> np.ndarray:
    """CKKS rotation: ``out[j] = v[j + k]`` cyclically."""
    return np.roll(v, -k)


def _slots_of(values: np.ndarray, positions: np.ndarray, period: int) -> np.ndarray:
    """A value placed at ``positions`` within one period and repeated over the slots."""
    one = np.zeros(period)
    one[positions] = values
    return periodic(one, SLOTS)


def _apply(sources, pos_out: np.ndarray, period: int) -> np.ndarray:
    """The periodic map on slot vectors: ``sum_k d_k * rot(x, k)`` per source, then the fold."""
    width = fold_width(period, [t for _, _, _, t in sources])
    z = np.zeros(SLOTS)
    for weight, x, pos_in, in_period in sources:
        offsets, table = cyclic_diagonals(weight, pos_in, pos_out, in_period, period, width)
        np.testing.assert_array_equal(offsets, cyclic_offsets(weight, pos_in, pos_out, in_period, period))
        for n, k in enumerate(offsets):
            z += periodic(table[n].toarray().ravel(), SLOTS) * _rot(x, int(k))
    for amount in fold_steps(period, width):
        z = z + _rot(z, amount)
    return z


def _positions(rng, count: int, period: int) -> np.ndarray:
    return np.sort(rng.choice(period, size=count, replace=False))


@pytest.mark.parametrize("in_period,period", [(256, 16), (64, 16), (64, 64), (16, 64), (32, 256), (256, 256)])
def test_a_periodic_map_puts_w_x_in_every_period_and_zero_elsewhere(in_period, period):
    rng = np.random.default_rng(in_period * 1000 + period)
    n, m = min(12, in_period), min(10, period)
    weight = sp.random(m, n, density=0.6, random_state=rng, format="csr")
    values = rng.normal(size=n)
    pos_in, pos_out = _positions(rng, n, in_period), _positions(rng, m, period)
    y = _apply([(weight, _slots_of(values, pos_in, in_period), pos_in, in_period)], pos_out, period)
    expected = _slots_of(weight @ values, pos_out, period)  # y at its rows in every period, zero elsewhere
    np.testing.assert_allclose(y, expected, atol=1e-12)
    assert len(fold_steps(period, fold_width(period, [in_period]))) == max(0, int(np.log2(in_period / period)))


def test_two_sources_of_different_periods_are_summed_once_each():
    rng = np.random.default_rng(7)
    pos_out = _positions(rng, 6, 8)
    sources, expected = [], np.zeros(6)
    for in_period, n in ((32, 9), (256, 20)):  # a periodic source and one that is not
        weight = sp.random(6, n, density=0.5, random_state=rng, format="csr")
        values, pos_in = rng.normal(size=n), _positions(rng, n, in_period)
        x = _slots_of(values, pos_in, in_period)
        if in_period == SLOTS:
            x[rng.choice(np.setdiff1d(np.arange(SLOTS), pos_in), 30)] = 5.0  # whatever lies between is never read
        sources.append((weight, x, pos_in, in_period))
        expected += weight @ values
    np.testing.assert_allclose(_apply(sources, pos_out, 8), _slots_of(expected, pos_out, 8), atol=1e-12)


def test_a_row_aligned_input_needs_one_diagonal():
    """Input ``q M + p_r`` for the ``q``-th entry of row ``r`` (the client's replicated layout):
    every entry is on diagonal 0 and the fold alone sums the rows."""
    period, rows, per_row = 16, 10, 8
    rng = np.random.default_rng(3)
    q, r = np.meshgrid(np.arange(per_row), np.arange(rows), indexing="ij")
    weight = sp.csr_matrix((rng.normal(size=q.size), (r.ravel(), (q * period + r).ravel())), shape=(rows, per_row * period))
    assert cyclic_offsets(weight, np.arange(per_row * period), np.arange(rows), SLOTS, period).tolist() == [0]


def test_positions_outside_their_period_are_refused():
    weight = sp.csr_matrix(np.ones((2, 2)))
    with pytest.raises(ValueError, match="beyond the periods"):
        cyclic_offsets(weight, np.array([0, 40]), np.array([0, 1]), 32, 8)
    with pytest.raises(ValueError, match="does not divide"):
        periodic(np.ones(3), SLOTS)
