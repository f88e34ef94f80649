"""Files saved by an earlier polyact still load: ``tests/data/legacy`` was written before the
subpackage layout (main at 6323e23) by a GELU MLP trained for 2 epochs on digits, converted at
degree 3 and compiled with sample packing; ``expected.npz`` holds what that version computed."""
from pathlib import Path

import numpy as np
import pytest
import torch

import he_backend
from polyact import load_model, load_pann

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.fixture(scope="module")
def expected():
    return np.load(LEGACY / "expected.npz")


def test_model_file_loads_with_its_weights(expected):
    model = load_model(LEGACY / "model.pt").eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.as_tensor(expected["x"])).numpy(), expected["model"], rtol=0, atol=1e-6)


def test_pann_file_loads_with_its_polynomials(expected):
    pann = load_pann(LEGACY / "mlp.pann").eval()
    with torch.no_grad():
        np.testing.assert_allclose(pann(torch.as_tensor(expected["x"])).numpy(), expected["pann"], rtol=0, atol=1e-6)
    assert pann.polyact_input_range == [0.0, 1.0]


def test_bundles_load_and_the_plan_computes_what_it_did(expected):
    server = he_backend.load_server_bundle(LEGACY)
    client = he_backend.load_client_bundle(LEGACY)
    np.testing.assert_allclose(server.plan.simulate(expected["x"]), expected["plan"], rtol=0, atol=1e-9)
    assert client.layout == server.plan.layout()
    assert client.input_range == server.input_range == (0.0, 1.0)
