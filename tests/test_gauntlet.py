"""The gauntlet: torchvision/timm/paper-style architectures (benchmarks/gauntlet.py) trained
briefly on digits, converted, compared with the original, compiled, and run encrypted."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.filterwarnings("ignore::polyact.nn.poly_act.OutOfRangeWarning"),
              pytest.mark.isolated]  # CKKS memory: this module runs in its own interpreter (tests/isolation.py)

_spec = importlib.util.spec_from_file_location("gauntlet", Path(__file__).parents[1] / "benchmarks" / "gauntlet.py")
gauntlet = sys.modules.setdefault("gauntlet", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(gauntlet)

EPOCHS = 10
FAST = {"resnet_basic", "vgg_maxpool"}  # shared ReLU and polynomial max pooling; the rest is slow
ARCHITECTURES = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in sorted(gauntlet.ENTRIES)]


@pytest.fixture(scope="module")
def rows(digits):
    return {}


def _row(rows, digits, name):
    if name not in rows:
        rows[name] = gauntlet.prepare(name, digits, EPOCHS)
    return rows[name]


def test_the_gauntlet_has_the_families_of_the_issue():
    assert len(gauntlet.ENTRIES) >= 8
    families = {"resnet_basic", "resnet_bottleneck", "mobilenetv2_relu6", "vgg_maxpool", "squeezenet_fire",
                "lenet5_tanh", "prelu_conv1d", "mixer_gelu", "learnable_aulu"}
    assert families <= set(gauntlet.ENTRIES)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_converts_and_its_plan_equals_the_pann(rows, digits, name):
    row = _row(rows, digits, name)
    assert row["converted"], row.get("why")
    assert row.get("compiled"), row.get("why")
    model, pann, report, plan = row["_"]
    assert row["accuracy_original"] > 40.0  # trained (chance is 10%); the PANN's accuracy is reported
    assert plan.depth == report.depth
    x = digits.x_test[:16].double()
    with torch.no_grad():
        reference = pann.double()(x).numpy()
    np.testing.assert_allclose(plan.simulate(x.numpy()), reference, rtol=1e-7, atol=1e-7 * np.abs(reference).max())


def test_reused_relu_gets_one_polynomial_per_call(rows, digits):
    _, _, report, _ = _row(rows, digits, "resnet_basic")["_"]
    names = {layer.name for layer in report.layers}
    assert {"layer1.relu.0", "layer1.relu.1"} <= names
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["layer1.relu.0"].observed != by_name["layer1.relu.1"].observed


def test_vgg_keeps_max_pooling_as_polynomials(rows, digits):
    _, pann, report, _ = _row(rows, digits, "vgg_maxpool")["_"]
    assert any("polynomial max pooling" in note for note in report.notes)
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in pann.modules())


TOO_DEEP = pytest.mark.xfail(run=False, reason="depth 23 needs N = 32768: with structured lowering the encrypted "
                              "run still passed 7.2 GiB resident, over the suite's 4 GB limit per test")

ENCRYPTED_MARKS = {"vgg_maxpool": [TOO_DEEP]}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.isolated(alone=True), *ENCRYPTED_MARKS.get(n, [])])
                                  for n in sorted(gauntlet.ENTRIES)])  # one interpreter each: SEAL's pool keeps every peak
def test_architecture_runs_encrypted_with_the_pann_top1(rows, digits, name):
    """One image (sample packing: a second one is a second, identical evaluation), checked for its
    top-1 and for every logit within 2^-10 of the largest: any wrong rotation, diagonal or rescale
    is far outside that (the runs reach 2^-14 to 2^-21)."""
    row = _row(rows, digits, name)
    assert row["depth"] <= gauntlet.MAX_ENCRYPTED_DEPTH
    result = gauntlet.run_encrypted(row, digits, samples=1)
    assert result["encrypted_agreement"] == 100.0, result
    _, pann, _, _ = row["_"]
    with torch.no_grad():
        scale = pann.double()(digits.x_test[:1].double()).abs().max().item()
    assert result["encrypted_max_error"] < 2**-10 * scale, result
