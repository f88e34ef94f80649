"""Shared fixtures: the digits data and small models trained once per session; the per-test peak
RSS limit and report (:mod:`rss_monitor`)."""
import os

import pytest
from threadpoolctl import threadpool_limits

# The tests fit small least-squares systems and train tiny models: on a busy 2-core machine a
# second BLAS or OpenMP thread only spins (tests/test_fit.py: 169 s with 2 OpenBLAS threads under
# load, 77 s with 1; 3 epochs of the digits CNN: 49.7 s with 2 torch threads, 2.4 s with 1). The
# variables reach child processes (pools, notebook kernels); the calls cover this process.
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ[variable] = os.environ.get(variable) or "1"
threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from polyact import data, models, trainer

pytest_plugins = ["rss_monitor", "isolation"]


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


@pytest.fixture(scope="module", autouse=True)
def _release_memory_after_each_module():
    """Hand a module's freed memory back to the OS before the next module runs: glibc keeps
    freed heap pages until ``malloc_trim``, so without this the suite's resident size grows with
    every module that held ciphertexts, keys or encoded weights."""
    yield
    from he_backend.memory import release_memory

    release_memory()  # collects garbage, then trims
