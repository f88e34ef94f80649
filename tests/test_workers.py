"""Two processes per request (he_backend.protocol.workers): a partner process computes half of every
affine map's giant-step runs of one input, or half of the inputs of a request of several; the
result is the same bytes as one process's."""
import pytest

import he_backend
from he_backend.protocol.serialization import unpack
from polyact.convert.pipeline import convert


def _alone_and_shared(model, digits, images: int):
    """The plan of ``model`` and its servers of one and two processes, and both's results for
    one request of ``images`` test images (the two-process server is closed)."""
    pann, _ = convert(model, digits, degree=3)
    plan = he_backend.compile(pann.double().eval(), digits.input_shape)
    client = plan.client()
    request = client.encrypt(digits.x_test[:images].numpy())
    alone = he_backend.Server(plan, client.public_context())
    shared = he_backend.Server(plan, client.public_context(), workers=2)
    try:
        results = {1: alone.run(request), 2: shared.run(request)}
    finally:
        shared.close()
    return plan, alone, shared, results


@pytest.mark.isolated  # CKKS memory: this test runs in another interpreter (tests/isolation.py)
@pytest.mark.slow
def test_a_partner_process_computes_the_same_ciphertexts(digits, digits_cnn):
    plan, alone, shared, results = _alone_and_shared(digits_cnn, digits, 1)
    # the partner makes the same baby rotations and the runs are added in one order: no byte differs
    assert unpack(results[2], "results")[1] == unpack(results[1], "results")[1]
    assert alone.engine.counts["rotate"] == plan.report()["totals"]["rotations"]
    # the server made fewer products itself: the partner made the rest
    assert 0 < shared.engine.counts["pt_mul"] < alone.engine.counts["pt_mul"]
    assert not shared.runner.partner._process.is_alive()


def test_workers_must_be_one_or_two(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=3)
    plan = he_backend.compile(pann.double().eval(), digits.input_shape)
    with pytest.raises(ValueError, match="workers must be 1 or 2"):
        he_backend.Server(plan, plan.client().public_context(), workers=3)


@pytest.mark.isolated
@pytest.mark.slow
def test_a_partner_runs_half_of_the_inputs_of_a_request(digits, digits_mlp):
    _, alone, shared, results = _alone_and_shared(digits_mlp, digits, 3)  # three ciphertexts: two here, one there
    assert unpack(results[2], "results")[1] == unpack(results[1], "results")[1]
    assert 3 * shared.engine.counts["pt_mul"] == 2 * alone.engine.counts["pt_mul"]
