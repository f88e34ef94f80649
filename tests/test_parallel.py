"""Encrypted batch jobs as real Ray tasks, kept light: a tiny PANN, one sample per ciphertext,
a one-CPU local Ray instance without dashboard; the decrypted outputs come back in order and
equal the plaintext PANN's."""
import numpy as np
import pytest
import torch
from torch import nn

import he_backend
from he_backend.protocol.parallel import run_encrypted
from polyact.convert.pipeline import convert

pytestmark = pytest.mark.isolated  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)


@pytest.fixture(scope="module")
def tiny_plan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    pann, _ = convert(model, torch.randn(256, 4), degree=2)
    return pann.double(), he_backend.compile(pann, (4,), "sample", min_scale_bits=25)


@pytest.mark.slow
def test_ray_tasks_return_the_chunks_in_order(tiny_plan):
    ray = pytest.importorskip("ray")
    pann, plan = tiny_plan
    x = torch.randn(5, 4, dtype=torch.float64) * 0.5
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result = run_encrypted(plan, x.numpy(), workers=3, ray_address="local")  # 3 tasks on one worker
        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 1.0
    finally:
        ray.shutdown()
    with torch.no_grad():
        reference = pann(x).numpy()
    assert result.outputs.shape == reference.shape == (5, 2)
    np.testing.assert_allclose(result.outputs, reference, atol=1e-3 * np.abs(reference).max())
    assert result.seconds["server_seconds"] > 0
