"""Shared fixtures: the digits data and small models trained once per session; the per-test peak
RSS limit and report (:mod:`rss_monitor`)."""
import pytest
import torch

from polyact import data, models, trainer

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
