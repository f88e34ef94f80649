"""Worst-case band perturbation (perturbation="worst_case") of polyact.train."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyact.approx.fitting import fit
from polyact.train.robust import (
    BandPerturbedActivation,
    WorstCasePerturbation,
    band_envelope,
    robust_finetune,
)


def test_band_envelope_bounds_the_real_composite_relu_error():
    bound, alpha = 3.0, 4
    poly = fit(nn.ReLU(), (-bound, bound), None, "composite", alpha=alpha)
    x = np.linspace(-bound, bound, 20001)
    error = np.abs(poly(x) - np.maximum(x, 0.0))
    band = band_envelope(torch.tensor(x), alpha, bound, composite=True).numpy()
    assert np.all(error <= band + 1e-12)
    assert error.max() > 0.25 * band.max()  # the band is not loose by orders of magnitude
    smooth = band_envelope(torch.tensor(x), alpha, bound, composite=False).numpy()
    np.testing.assert_allclose(smooth, 2.0 ** -alpha * bound)


def _net(bits):
    torch.manual_seed(0)
    act = BandPerturbedActivation(nn.Tanh(), bits, 1.0, composite=False)
    return nn.Sequential(nn.Linear(5, 16), act, nn.Linear(16, 3)), act


def test_sign_gradient_step_is_the_worst_first_order_perturbation():
    net, act = _net(bits=6)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    loss_of = lambda: F.cross_entropy(net(x), y)
    net.train()
    clean = loss_of().item()
    WorstCasePerturbation([act])(loss_of)
    worst = loss_of().item()
    assert act.directions == []  # consumed by the training pass
    eps = 2.0 ** -6
    assert worst > clean
    for seed in range(5):  # any other perturbation in the band raises the loss less
        torch.manual_seed(seed)
        act.directions = [torch.randint(0, 2, (32, 16)).float() * 2 - 1]
        assert loss_of().item() < worst
    # first order: the increase is eps * sum |dL/dy|
    h = net[1].activation(net[0](x)).detach().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(net[2](h), y), h)[0]
    assert abs((worst - clean) - eps * grad.abs().sum().item()) < 0.1 * eps * grad.abs().sum().item()
    net.eval()
    assert loss_of().item() == clean  # evaluation is never perturbed


def test_worst_case_finetune_trains_and_returns_the_model_with_original_activations(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))
    result = robust_finetune(model, digits, bits=6, perturbation="worst_case", epochs=2, mixup=0.0)
    assert result.stages[0].label == "worst case in the 2^-6 band"
    assert result.stages[0].test_accuracy > 60  # learns while perturbed (untrained: ~10)
    assert any(isinstance(m, nn.GELU) for m in result.model.modules())
    assert not torch.equal(result.model[1].weight, model[1].weight)


def test_the_probing_pass_leaves_batch_norm_running_statistics_alone():
    """One training step updates the running statistics once, as without the perturbation
    (planted: no restore after the probe -> running mean moved twice -> red)."""
    torch.manual_seed(0)
    act = BandPerturbedActivation(nn.ReLU(), 6, 1.0, composite=False)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), act, nn.Linear(8, 3)).train()
    x, y = 3.0 + torch.randn(64, 5), torch.randint(0, 3, (64,))
    loss_of = lambda: F.cross_entropy(net(x), y)
    bn = net[1]
    before = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    WorstCasePerturbation([act], net)(loss_of)
    torch.testing.assert_close(bn.running_mean, before[0], rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, before[1], rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == before[2]
    loss_of()  # the training pass: one update with momentum m
    h = net[0](x).detach()
    m = bn.momentum
    torch.testing.assert_close(bn.running_mean, (1 - m) * before[0] + m * h.mean(0))
    torch.testing.assert_close(bn.running_var, (1 - m) * before[1] + m * h.var(0, unbiased=True))


def _pann_accuracy_at(model, data, calibration_size=2048, **precision):
    from polyact.convert.pipeline import convert
    from polyact.train.loop import evaluate

    pann, _ = convert(model, data.calibration(calibration_size), **precision)
    return evaluate(pann, data.x_test, data.y_test)


def test_the_guard_never_returns_a_pann_below_its_start(digits, digits_mlp):
    """A learning rate that wrecks the network: unguarded, the PANN ends far below where it
    started; guarded, it ends at or above the start, measured independently (planted: guard
    ignored -> red)."""
    from polyact.train.loop import evaluate

    start = _pann_accuracy_at(digits_mlp, digits, degree=7)
    wrecked = robust_finetune(digits_mlp, digits, degree=7, lr=3.0, epochs=1, mixup=0.0, guard=False)
    assert evaluate(wrecked.pann, digits.x_test, digits.y_test) < start - 20  # the scenario is real
    guarded = robust_finetune(digits_mlp, digits, degree=7, lr=3.0, epochs=1, mixup=0.0)
    end = evaluate(guarded.pann, digits.x_test, digits.y_test)
    assert end >= start - 1e-6
    assert guarded.start_accuracy == start and guarded.final_accuracy == end


@pytest.mark.isolated(alone=True)  # in its own interpreter, beside the other groups
@pytest.mark.slow  # about 3 CPU minutes: a ResNet-20 (19 activations) pre-trained briefly on digits32
def test_robust_finetune_of_a_resnet20_on_digits32_never_ends_below_its_start():
    """ResNet-20's layout at width 8 on a digits32 subset, pre-trained briefly (SGD + weight decay,
    as the benchmark); a worst-case robust fine-tune with a learning rate that breaks it must end
    at or above its start, at the precision it trained for (composite ReLU, 2^-7)."""
    from polyact import data as datasets
    from polyact import models
    from polyact.train.loop import evaluate, train_classifier

    full = datasets.digits32()
    pick = torch.randperm(len(full.x_train), generator=torch.Generator().manual_seed(0))[:3000]
    ds = datasets.Dataset("digits32", full.x_train[pick], full.y_train[pick], full.x_test[:800], full.y_test[:800])
    torch.manual_seed(0)
    net = models.build_model("resnet", ds.input_shape, 10, "relu", channels=(8,) * 3 + (16,) * 3 + (32,) * 3)
    train_classifier(net, ds, epochs=10, optimizer="sgd", lr=0.02, weight_decay=5e-4, seed=0)
    settings = {"perturbation": "worst_case", "alpha": 7, "band_bits": 7, "lr": 0.5, "epochs": 1,
                "calibration_size": 512, "report_depth": False}
    start = _pann_accuracy_at(net, ds, calibration_size=512, alpha=7)
    assert start > 15  # trained (chance is 10%)
    broken = robust_finetune(net, ds, guard=False, **settings)
    assert evaluate(broken.pann, ds.x_test, ds.y_test) < start - 5  # the scenario is real
    guarded = robust_finetune(net, ds, **settings)
    assert evaluate(guarded.pann, ds.x_test, ds.y_test) >= start - 1e-6
