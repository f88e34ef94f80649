"""Model zoo and trainer."""
import pytest
import torch

from polyact import models
from polyact.train import loop as trainer


def test_quick_trainer_reaches_97_percent_with_the_digits_cnn(digits, digits_cnn):
    assert trainer.evaluate(digits_cnn, digits.x_test, digits.y_test) >= 97.0


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "aglu", "pwlu"])
def test_zoo_models_take_any_activation(name, activation):
    model = models.build_model(name, (1, 8, 8), 10, activation)
    out = model(torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 10)
    factory, spec = model.polyact_factory
    rebuilt = models.resolve_factory(factory)(**spec)
    assert type(rebuilt) is type(model)


def test_cnn_handles_mnist_sized_and_colour_images():
    assert models.build_model("cnn", (1, 28, 28), 10)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert models.build_model("cnn", (3, 32, 32), 10, pool="max")(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bad_model_requests_are_explained():
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="square images"):
        models.build_model("cnn", (30,), 2)
    with pytest.raises(ValueError, match="package.module:function"):
        models.resolve_factory("nocolon")
    with pytest.raises(ValueError, match="cannot import"):
        models.resolve_factory("polyact.models:nothing_here")


def _first_batch_distance(digits, mixup):
    """Distance of each first-batch training input to its nearest training sample."""
    torch.manual_seed(0)
    model = models.build_model("mlp", (1, 8, 8), 10, hidden=(16,))
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    trainer.train_classifier(model, digits, epochs=1, mixup=mixup)
    batch = seen[0].reshape(len(seen[0]), -1)
    return torch.cdist(batch, digits.x_train.reshape(len(digits.x_train), -1)).min(1).values


def test_mixup_trains_on_convex_combinations(digits):
    assert _first_batch_distance(digits, 0.0).max() == 0.0  # plain samples
    assert (_first_batch_distance(digits, 0.4) > 1e-3).float().mean() > 0.5  # mixed pairs


def test_extra_loss_is_added_every_batch_and_trained_on(digits):
    def bias_norm(weight):
        torch.manual_seed(0)
        model = models.build_model("mlp", (1, 8, 8), 10, hidden=(16,))
        calls = []

        def penalty():
            calls.append(1)
            return weight * model.layers[1].bias.pow(2).sum()

        trainer.train_classifier(model, digits, epochs=2, extra_loss=penalty)
        assert len(calls) == 2 * 23  # every batch: 1437 samples / 64 per batch, 2 epochs
        return model.layers[1].bias.norm().item()

    assert bias_norm(10.0) < 0.3 * bias_norm(0.0)
