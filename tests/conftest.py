"""Shared fixtures: the digits data and small models trained once per session; the per-test peak
RSS limit and report (:mod:`rss_monitor`); the groups of tests, each run by pytest-isolated in a
fresh interpreter (:mod:`isolation`).

The data set and the trained models are also written to a folder shared with those children
(``POLYACT_TEST_CACHE``, made by the main pytest process), so each is computed once per run: a
child loads the same tensors, weights and torch random state that training left in the process
that computed them (training is deterministic: seeded, one thread)."""
import os
import shutil
import tempfile
from pathlib import Path

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

from polyact import data, models
from polyact.train import loop as trainer

pytest_plugins = ["rss_monitor", "isolation"]
CACHE_VARIABLE = "POLYACT_TEST_CACHE"
_OWN_CACHE = pytest.StashKey[str]()  # the folder this process made (and removes)


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(CACHE_VARIABLE):  # the outermost pytest: its children inherit the folder
        config.stash[_OWN_CACHE] = os.environ[CACHE_VARIABLE] = tempfile.mkdtemp(prefix="polyact-test-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE in config.stash:
        shutil.rmtree(config.stash[_OWN_CACHE], ignore_errors=True)
        del os.environ[CACHE_VARIABLE]


def _shared(name: str, load, compute, save):
    """``load(path)`` of the run's cached ``name`` if a process of this run saved it, else ``compute()``,
    saved for the others (written under another name, then renamed: readers never see half a file)."""
    path = Path(os.environ[CACHE_VARIABLE], name) if os.environ.get(CACHE_VARIABLE) else None
    if path is not None and path.exists():
        return load(path)
    value = compute()
    if path is not None:
        partial = path.with_name(f"{os.getpid()}-{name}")
        save(value, partial)
        os.replace(partial, path)
    return value


@pytest.fixture(scope="session")
def digits():
    return _shared("digits.npz", data.load_npz, data.digits, lambda dataset, path: dataset.save_npz(path))


def _trained(digits, name, activation, epochs, **kwargs):
    torch.manual_seed(0)
    model = models.build_model(name, digits.input_shape, digits.num_classes, activation, **kwargs)

    def train():
        trainer.train_classifier(model, digits, epochs=epochs, seed=0)
        return {"weights": model.state_dict(), "rng": torch.get_rng_state()}

    def load(path):
        return torch.load(path, weights_only=True)

    trained = _shared(f"{name}-{activation}-{epochs}.pt", load, train, torch.save)
    model.load_state_dict(trained["weights"])
    torch.set_rng_state(trained["rng"])  # as if trained here: the tests that follow draw the same numbers
    return model.eval()


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
    from he_backend.service.memory import release_memory

    release_memory()  # collects garbage, then trims
