"""A test that would catch a leak at a refresh round.

Two servers hold different weights (the same plan, its first map scaled by 1/4) and receive the
same encrypted batch. What the client decrypts at the refresh, the integer coefficients
``u = m + r`` of every masked ciphertext, is collected over several rounds, and a two-sample
Kolmogorov-Smirnov test compares the two servers, per ciphertext of the request, on the
coefficients and on the differences of neighbouring coefficients (where a mask shared by
coefficients would show). With correct masks the two views are within ``2^-51`` in statistical
distance (the plan's report), so no test may reject; each planted fault must make one reject:

- masks drawn too narrow (``2^-76`` of the intended width: about the plaintext coefficients' own
  spread, ``2^24`` here),
- one mask shared by all coefficients of a ciphertext,
- the mask missing on one ciphertext of the request.

The threshold ``p < 1e-6`` over 4 comparisons keeps false alarms below ``4e-6`` per run.
"""
import numpy as np
import pytest
import scipy.stats
import tenseal.sealapi as sa

import he_backend
from he_backend.eval import rns
from he_backend.protocol import refresh
from he_backend.protocol import server as server_module
from he_backend.protocol.plan import Plan
from he_backend.protocol.serialization import seal_from_bytes, unpack
from polyact.convert.pipeline import convert

pytestmark = pytest.mark.isolated  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)

ROUNDS = 4  # refresh requests per server: 4 x 8192 coefficients per ciphertext and server
ALPHA = 1e-6


@pytest.fixture(scope="module")
def setup(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=7)
    plan = he_backend.compile(pann.double().eval(), digits.input_shape, "batch", max_levels=4)
    other = Plan.from_bytes(plan.to_bytes())
    first = next(s for s in other.steps if hasattr(s, "weights") and not s.identity)
    first.weights = [w * 0.25 for w in first.weights]  # other weights: smaller intermediates
    client = plan.client()
    x = digits.x_test[: 2 * plan.samples_per_ciphertext].numpy()  # two ciphertexts per request
    return plan, other, client, client.encrypt(x)


def _views(plan, client, batch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per ciphertext of the request, the coefficients the client decrypts over ROUNDS rounds
    and their neighbours' differences (exact integers, then as fractions of the mask width)."""
    server = he_backend.Server(plan, client.public_context())
    engine = client.keys.engine
    views = []
    for _ in range(ROUNDS):
        _, blobs = unpack(server.start(batch), refresh.REQUEST_KIND)
        for i, blob in enumerate(blobs):
            pt = client.keys.decrypt_plaintext(seal_from_bytes(sa.Ciphertext, blob, engine.context, "ct"))
            width = 2.0 ** refresh.mask_bits(pt.scale, plan.cuts[0].bounds[0], plan.mask.sigma)
            values = rns.coefficients(engine, pt)
            if len(views) <= i:
                views.append(([], []))
            views[i][0].append(values.astype(float) / width)
            views[i][1].append(np.diff(values).astype(float) / width)
    return [(np.concatenate(u), np.concatenate(d)) for u, d in views]


def _smallest_p(setup) -> float:
    plan, other, client, batch = setup
    ours, theirs = _views(plan, client, batch), _views(other, client, batch)
    assert len(ours) == len(theirs) == 2
    tests = []
    for a, b in zip(ours, theirs):
        tests += [scipy.stats.ks_2samp(a[k], b[k]).pvalue for k in (0, 1)]
    return min(tests)


@pytest.mark.slow
def test_the_client_cannot_tell_two_weight_sets_apart(setup):
    assert setup[0].report()["refresh"]["statistical_bits"] > 50
    assert _smallest_p(setup) > ALPHA


@pytest.mark.slow
def test_masks_too_narrow_are_caught(setup, monkeypatch):
    bits = refresh.mask_bits
    monkeypatch.setattr(refresh, "mask_bits", lambda scale, bound, sigma: bits(scale, bound, sigma) - 76)
    assert _smallest_p(setup) < ALPHA


@pytest.mark.slow
def test_a_mask_shared_by_coefficients_is_caught(setup, monkeypatch):
    draw = refresh.secure_integers
    monkeypatch.setattr(refresh, "secure_integers", lambda count, bits: np.repeat(draw(1, bits), count))
    assert _smallest_p(setup) < ALPHA


@pytest.mark.slow
def test_a_mask_missing_on_one_ciphertext_is_caught(setup, monkeypatch):
    calls = []

    def mask(engine, ct, bound, sigma, level):
        calls.append(1)
        if len(calls) % 2 == 0:  # the second ciphertext of every request goes out unmasked
            return engine.mod_switch(ct, level), np.zeros(engine.params.poly_modulus_degree, dtype=object)
        return refresh.mask(engine, ct, bound, sigma, level)

    monkeypatch.setattr(server_module, "mask", mask)
    assert _smallest_p(setup) < ALPHA
