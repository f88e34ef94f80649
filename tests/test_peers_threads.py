"""Two threads per request: the same ciphertext operations, overlapped (SEAL releases the GIL),
give the same result and the same operation counts as one thread."""
import numpy as np
import pytest

import he_backend
from he_backend.ckks import Engine
from he_backend.params import CkksParams
from he_backend.serialization import unpack
from polyact.convert import convert


@pytest.mark.isolated  # CKKS memory: this test runs in another interpreter (tests/isolation.py)
@pytest.mark.slow
def test_two_threads_compute_the_same_ciphertexts(digits, digits_mlp):
    pann, _ = convert(digits_mlp, digits, degree=7)
    plan = he_backend.compile(pann.double().eval(), digits.input_shape)
    client = plan.client()
    request = client.encrypt(digits.x_test[:1].numpy())
    results, counts = {}, {}
    for threads in (1, 2):
        server = he_backend.Server(plan, client.public_context())
        server.engine.use_threads(threads)
        results[threads] = server.run(request)
        counts[threads] = dict(server.engine.counts)
    # the server is deterministic: overlapping independent operations changes no byte
    assert unpack(results[2], "results")[1] == unpack(results[1], "results")[1]
    assert counts[2] == counts[1]
    assert counts[1]["rotate"] == plan.report()["totals"]["rotations"]


def test_engine_threads_must_be_positive():
    with pytest.raises(ValueError, match="threads"):
        Engine(CkksParams(8192, (40, 30, 40), 30), threads=0)


def test_submit_runs_inline_with_one_thread_and_on_a_helper_with_two():
    import threading

    engine = Engine(CkksParams(8192, (40, 30, 40), 30))
    assert engine.submit(threading.get_ident).result() == threading.get_ident()
    engine.use_threads(2)
    assert engine.submit(threading.get_ident).result() != threading.get_ident()
    assert engine.submit(np.add, 2, 3).result() == 5
