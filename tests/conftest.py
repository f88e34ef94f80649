"""Shared fixtures: the digits data and small models trained once per session; the per-test peak
RSS limit and report (:mod:`rss_monitor`)."""
import os

import pytest
from threadpoolctl import threadpool_limits

# The fits solve small least-squares systems: on a busy 2-core machine multi-threaded BLAS only
# spins (tests/test_fit.py took 169 s with 2 OpenBLAS threads under load, 77 s with 1). The
# variable reaches child processes (pools, notebook kernels); the call covers this process.
os.environ["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS") or "1"
threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")

import torch  # noqa: E402

from polyact import data, models, trainer  # noqa: E402

pytest_plugins = ["rss_monitor"]


@pytest.fixture(scope="session")
def digits():
    return data.digits()


def _trained(digits, name, activation, epochs, **kwargs):
    torch.manual_seed(0)
    model = models.build_model(name, digits.input_shape, digits.num_classes, activation, **kwargs)
    trainer.train_classifier(model, digits, epochs=epochs, seed=0)
    return model


@pytest.fixture(scope="session")
def digits_cnn(digits):
    return _trained(digits, "cnn", "relu", 15)


@pytest.fixture(scope="session")
def digits_mlp(digits):
    return _trained(digits, "mlp", "relu", 15, hidden=(32,))


@pytest.fixture(scope="session")
def digits_resnet(digits):
    return _trained(digits, "resnet", "gelu", 4, channels=(4, 8))
