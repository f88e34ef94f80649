"""In-place activations: the PANN and its lowered graph compute what PyTorch computes.

``z = F.relu(y, inplace=True); z + y`` is ``2 relu(y)`` in PyTorch (``y`` itself changed), so the
PANN must compute ``2 p(y)``, not ``p(y) + y``. Every reference below is written by hand from the
fitted polynomial ``p`` (the PANN's own PolyAct, applied to a copy of the layer's input), so a
conversion that drops the in-place semantics is off by ``y - p(y)`` (about ``relu(-y)``).
Planted faults (each turns these tests red): ``resolve_inplace`` returning without rewiring
(fx mode, and lowering of module-swapped PANNs), ``PolyAct.inplace`` ignored in forward (module
swap), ``install`` not setting ``inplace``.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyact.convert.pipeline import convert
from polyact.convert.sites import UnsupportedOperationError
from polyact.ir.graph import LoweringError
from polyact.ir.lower import lower
from polyact.nn.poly_act import PolyAct

torch.manual_seed(0)
X = torch.randn(64, 4)


class Functional(nn.Module):
    """``F.relu(y, inplace=True)`` and then ``y`` read again."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        y = self.lin1(x)
        z = F.relu(y, inplace=True)
        return self.lin2(z + y)

    def reference(self, x, p):
        y = self.lin1(x)
        return self.lin2(2 * p(y))

    def naive(self, x, p):  # what the PANN computed before in-place semantics were kept
        y = self.lin1(x)
        return self.lin2(p(y) + y)


class ModuleInplace(nn.Module):
    """``nn.ReLU(inplace=True)`` as in torchvision, its input read again by a residual add."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(4, 6), nn.Linear(6, 3), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.lin1(x)
        return self.lin2(self.act(y) + y)

    def reference(self, x, p):
        return self.lin2(2 * p(self.lin1(x)))

    naive = Functional.naive


class Method(nn.Module):
    """``y.relu_()`` whose result is dropped; ``y`` is read after it (and once before it)."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        y = self.lin1(x)
        before = y * 0.5
        y.relu_()
        return self.lin2(y + before)

    def reference(self, x, p):
        y = self.lin1(x)
        return self.lin2(p(y) + 0.5 * y)

    def naive(self, x, p):
        return self.lin2(1.5 * self.lin1(x))


class Augmented(nn.Module):
    """``z = y; z += 1`` changes ``y`` in place, but fx records ``z + 1`` (proxies have no
    ``__iadd__``): the trace has lost the change, so it must be refused, never converted."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2, self.act = nn.Linear(4, 6), nn.Linear(6, 3), nn.SiLU()

    def forward(self, x):
        y = self.lin1(x)
        z = y
        z += 1.0
        return self.lin2(self.act(y))


def _poly(pann: nn.Module) -> PolyAct:
    (module,) = [m for m in pann.modules() if isinstance(m, PolyAct)]
    return module


def _check(model: nn.Module, use_fx: bool) -> None:
    model = model.eval()
    pann, report = convert(model, X, degree=8, use_fx=use_fx)
    x = torch.randn(32, 4)
    poly = copy.deepcopy(_poly(pann))
    poly.inplace = False
    with torch.no_grad():
        expected = model.reference(x, lambda t: poly(t.clone())).double().numpy()
        got = pann(x.clone()).double().numpy()
        wrong = model.naive(x, lambda t: poly(t.clone())).double().numpy()
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 1e-5 * scale
    assert np.abs(wrong - expected).max() > 0.05 * scale  # the planted fault would be seen
    graph = lower(pann, (4,))
    assert np.abs(graph.forward(x.double().numpy()) - expected).max() < 1e-5 * scale
    assert report.depth == graph.depth


@pytest.mark.parametrize("model", [Functional, ModuleInplace, Method], ids=lambda m: m.__name__)
def test_inplace_changes_are_seen_by_later_readers_fx(model):
    _check(model(), use_fx=True)


def test_inplace_module_works_in_place_after_module_swapping():
    model = ModuleInplace().eval()
    pann, report = convert(model, X, degree=8, use_fx=False)
    assert any("swapped" in n for n in report.notes)
    poly = copy.deepcopy(pann.act)
    assert pann.act.inplace and isinstance(poly, PolyAct)
    poly.inplace = False
    x = torch.randn(32, 4)
    with torch.no_grad():
        expected = model.reference(x, lambda t: poly(t.clone()))
        got = pann(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    graph = lower(pann, (4,))  # the lowering of a module-swapped PANN agrees
    assert np.abs(graph.forward(x.double().numpy()) - expected.double().numpy()).max() < 1e-5 * float(expected.abs().max())


def test_inplace_polyact_trains_like_an_inplace_relu():
    model = ModuleInplace().eval()
    pann, _ = convert(model, X, degree=8, use_fx=False)
    pann.train()
    loss = pann(torch.randn(8, 4)).square().sum()
    loss.backward()  # autograd accepts the in-place polynomial (it works on a copy of its input)
    assert pann.lin1.weight.grad is not None and torch.isfinite(pann.lin1.weight.grad).all()


def test_functional_inplace_calls_in_untraced_models_are_refused():
    with pytest.raises(UnsupportedOperationError, match="F.relu"):
        convert(Functional().eval(), X, degree=8, use_fx=False)


class ViewChanged(nn.Module):
    """An in-place relu on a slice of ``y``; ``y`` (the base) is read later."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        y = self.lin1(x)
        F.relu(y[:, :3], inplace=True)
        return self.lin2(y)


def test_inplace_change_of_a_view_read_through_its_base_is_refused_by_name():
    with pytest.raises(UnsupportedOperationError, match=r"relu.*shares memory.*inplace=False"):
        convert(ViewChanged().eval(), X, degree=8)


def test_augmented_assignment_lost_by_the_trace_is_refused_with_its_line():
    with pytest.raises(UnsupportedOperationError, match=r"'add'.*test_convert_inplace.py:\d+.*out of place"):
        convert(Augmented().eval(), X, degree=8)
    model = Augmented().eval()
    pann, report = convert(model, X, degree=8, use_fx=False)  # eager module swapping is exact ...
    assert report.depth is None and any("out of place" in n for n in report.notes)
    with pytest.raises(LoweringError, match="out of place"):  # ... but it cannot be lowered
        lower(pann, (4,))
