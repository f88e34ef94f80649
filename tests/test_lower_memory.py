"""Lowering builds no map larger than a layer's own weights: a VGG-style classifier after an
adaptive pool that replicates a 1x1 map 7x7 times stays factored (issue 26, item 5).

Planted fault: ``_linear`` always taking the sparse-copy path (``last_axis_linear`` of the whole
weight, then a sparse product) -> the traced allocation peak passes the bound."""
from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from torch import nn

from polyact.approx.fitting import fit
from polyact.ir.lower import lower
from polyact.nn.poly_act import PolyAct


class VggHead(nn.Module):
    """features -> a 1x1 map (32x32 input, five pools) -> AdaptiveAvgPool2d(7) -> Linear(C*49, H)."""

    def __init__(self, channels=64, hidden=2048):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.pool = nn.AvgPool2d(4)
        self.act = PolyAct(fit("relu", (-4.0, 4.0), 4))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.fc1, self.act2, self.fc2 = nn.Linear(channels * 49, hidden), PolyAct(fit("relu", (-4.0, 4.0), 4)), nn.Linear(hidden, 3)

    def forward(self, x):
        x = self.avgpool(self.act(self.pool(self.conv(x))))
        return self.fc2(self.act2(self.fc1(torch.flatten(x, 1))))


def test_replicating_pool_before_a_linear_layer_stays_factored():
    torch.manual_seed(0)
    model = VggHead().eval()
    weight_bytes = model.fc1.weight.numel() * 8  # fc1 in float64: 51 MB
    tracemalloc.start()
    try:
        graph = lower(model, (3, 4, 4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy/scipy allocations only (torch's own tensors are not traced): the dense map would be
    # a sparse copy of fc1 (1.5x its weights) and a product as large again
    assert peak < 0.3 * weight_bytes, f"lowering allocated {peak / 2**20:.0f} MiB"
    (fc1,) = [n for n in graph.nodes.values() if getattr(n, "sources", None) == ["act"]]
    assert fc1.weights[0].shape == (2048, 64)  # W P: fc1's weights times the 49-fold replication
    x = torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    assert np.abs(graph.forward(x.numpy()) - expected).max() < 1e-9 * (1 + np.abs(expected).max())
