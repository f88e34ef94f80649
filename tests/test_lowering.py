"""Structured lowering: sparse maps built from layer structure equal torch on basis vectors,
slot layouts and tile diagonals reproduce the maps, big networks lower in bounded memory, and
tensors spanning several ciphertexts run encrypted."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from he_backend.eval.diagonals import tile_diagonals
from he_backend.lowering.layout import Layout, count_diagonals
from polyact.ir.graph import LoweringError
from polyact.ir.linear_maps import DENSE_PROBE_INPUTS, conv_matrix
from polyact.ir.lower import lower


def _torch_matrix(module: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """Independent reference: the module applied to every basis vector (columns)."""
    size = int(np.prod(shape))
    with torch.no_grad():
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        zero = module(torch.zeros((1, *shape), dtype=torch.float64)).reshape(1, -1)
        return (module(basis).reshape(size, -1) - zero).numpy().T


def _lowered(module: nn.Module, shape: tuple[int, ...]) -> tuple[sp.csr_matrix, np.ndarray]:
    graph = lower(module, shape)
    node = graph.nodes[graph.output]
    assert len(node.weights) == 1 and sp.issparse(node.weights[0])
    return node.weights[0], node.bias


CONVS = [
    (nn.Conv2d(3, 4, 3, stride=1, padding=1), (3, 7, 6)),
    (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 8)),
    (nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(0, 2), dilation=(2, 1)), (4, 9, 7)),
    (nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (4, 8, 8)),
    (nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False), (4, 9, 9)),  # depthwise
    (nn.Conv2d(2, 3, 3, padding="same", dilation=2), (2, 6, 5)),
    (nn.Conv1d(3, 5, 4, stride=3, padding=2, dilation=2), (3, 17)),
    (nn.Conv1d(4, 4, 3, padding=1, groups=4), (4, 10)),
]


@pytest.mark.parametrize("conv, shape", CONVS, ids=[f"{type(c).__name__}-{i}" for i, (c, _) in enumerate(CONVS)])
def test_sparse_conv_equals_torch_on_basis_vectors(conv, shape):
    torch.manual_seed(0)
    conv = conv.double().eval()
    nn.init.normal_(conv.weight)
    weight, bias = _lowered(conv, shape)
    np.testing.assert_allclose(weight.toarray(), _torch_matrix(conv, shape), rtol=0, atol=1e-12)
    with torch.no_grad():
        expected_bias = conv(torch.zeros((1, *shape), dtype=torch.float64)).reshape(-1).numpy()
    np.testing.assert_allclose(bias, expected_bias, rtol=0, atol=1e-12)
    # built from the weights: exactly the structural non-zeros, never a dense matrix
    assert weight.nnz == np.count_nonzero(_torch_matrix(conv, shape))


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)), (3, 7, 7)),
    (lambda: nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(2 * 9, 4)), (2, 7, 8)),
    (lambda: nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(4)), (4, 5)),  # Linear on the last axis
    (lambda: nn.AdaptiveAvgPool1d(4), (3, 10)),
    (lambda: nn.ZeroPad2d((1, 0, 2, 1)), (2, 3, 4)),
])
def test_structured_layers_equal_torch_on_basis_vectors(make, shape):
    torch.manual_seed(1)
    module = make().double().eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(), m.running_var.uniform_(0.5, 2.0), m.weight.data.normal_(), m.bias.data.normal_()
    weight, _ = _lowered(module, shape)
    np.testing.assert_allclose(weight.toarray(), _torch_matrix(module, shape), rtol=0, atol=1e-12)


class Functional(nn.Module):
    """Functional convolutions, residual adds, slicing, reshapes and scalar factors."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 2, 3, 3))
        self.scale = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        y = F.conv2d(x, self.w, stride=2, padding=1) * self.scale
        z = 0.5 * y - F.avg_pool2d(x[:, :1].repeat(1, 4, 1, 1), 2) / 3.0 + 1.0
        return torch.cat([z.permute(0, 2, 3, 1).reshape(x.shape[0], -1), -x.flatten(1)[:, ::3]], dim=1)


def test_functional_operations_equal_torch():
    torch.manual_seed(2)
    module = Functional().double().eval()
    shape = (2, 6, 6)
    weight, bias = _lowered(module, shape)
    np.testing.assert_allclose(weight.toarray(), _torch_matrix(module, shape), rtol=0, atol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(bias, module(torch.zeros((1, *shape), dtype=torch.float64)).reshape(-1).numpy(), atol=1e-12)


class Mean(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_small_unusual_operations_are_probed_and_large_ones_refused_by_name():
    torch.manual_seed(3)
    weight, _ = _lowered(Mean(), (2, 3, 4))  # no structured rule: dense probe of a small op
    np.testing.assert_allclose(weight.toarray(), _torch_matrix(Mean(), (2, 3, 4)), atol=1e-12)
    side = int(np.sqrt(DENSE_PROBE_INPUTS)) + 8
    with pytest.raises(LoweringError, match=r"mean.*no structured lowering.*limit"):
        lower(Mean(), (2, side, side))


def test_gap_layout_keeps_strided_convolution_diagonals_independent_of_image_size():
    counts = {}
    for side in (16, 32):
        weight, _ = conv_matrix(np.ones((8, 4, 3, 3)), (4, side, side), (2, 2), (1, 1), (1, 1), 1)
        flat_in = Layout.flat((4, side, side))
        flat_out, gapped = Layout.flat((8, side // 2, side // 2)), Layout.gapped((8, side // 2, side // 2), 2, (side, side))
        counts[side] = (count_diagonals(weight, flat_in.positions, flat_out.positions),
                        count_diagonals(weight, flat_in.positions, gapped.positions))
    assert counts[16][1] == counts[32][1] < counts[16][0] / 4 < counts[32][0] / 8
    # four channels share one grid: positions are distinct and fill ceil(C / 4) grids exactly
    pos = Layout.gapped((8, 16, 16), 2, (32, 32)).positions
    assert np.unique(pos).size == pos.size and pos.max() + 1 == 2 * 32 * 32


@pytest.mark.parametrize("block", [64, 256])
def test_tile_diagonals_reproduce_the_map_across_ciphertexts(block):
    rng = np.random.default_rng(4)
    weight, _ = conv_matrix(rng.normal(size=(8, 4, 3, 3)), (4, 8, 8), (2, 2), (1, 1), (1, 1), 1)
    pos_in = Layout.flat((4, 8, 8)).positions
    pos_out = Layout.gapped((8, 4, 4), 2, (8, 8)).positions
    x = rng.normal(size=pos_in.size)
    slots_in = np.zeros(-(-pos_in.max() // block) * block + block)
    slots_in[pos_in] = x
    cts_in = slots_in.reshape(-1, block)
    cts_out = np.zeros((-(-(pos_out.max() + 1) // block), block))
    for (i, j), (offsets, table) in tile_diagonals(weight, pos_in, pos_out, block).items():
        for k, d in zip(offsets, table.toarray()):
            cts_out[i] += d * np.roll(cts_in[j], -k)  # rot(x, k)[p] = x[p + k]
    np.testing.assert_allclose(cts_out.reshape(-1)[pos_out], weight @ x, rtol=0, atol=1e-12)


LOWER_RESNET20 = textwrap.dedent("""
    import json, resource, time, torch
    from polyact import convert, models
    from polyact.ir.lower import lower
    torch.manual_seed(0)
    model = models.build_model("resnet", (3, 32, 32), 10, channels=(16,) * 3 + (32,) * 3 + (64,) * 3).eval()
    pann, report = convert(model, torch.randn(8, 3, 32, 32), degree=2)
    start = time.perf_counter()
    graph = lower(pann, (3, 32, 32))
    seconds = time.perf_counter() - start
    print(json.dumps({"depth": report.depth, "graph_depth": graph.depth, "seconds": seconds,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


@pytest.mark.slow
def test_resnet20_at_cifar_shape_lowers_in_bounded_memory():
    out = subprocess.run([sys.executable, "-c", LOWER_RESNET20], capture_output=True, text=True, timeout=600, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["depth"] == figures["graph_depth"] == 39  # stem 2, nine blocks of 4, head 1
    assert figures["peak_mib"] < 1536  # dense lowering needed > 15 GB
    assert figures["seconds"] < 60  # a few seconds on an idle 2-core machine; generous for a shared one


@pytest.mark.slow
def test_tensor_spanning_two_ciphertexts_runs_encrypted():
    import he_backend
    from he_backend.eval.params import params_for
    from polyact.convert.pipeline import convert

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 18, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(18 * 16, 10)).eval()
    calib = torch.randn(32, 1, 16, 16)
    pann, report = convert(model, calib, degree=2)
    pann = pann.double().eval()
    plan = he_backend.compile(pann, (1, 16, 16), params=params_for(8192, report.depth, 30))
    assert plan.block == 4096 and plan.ciphertexts(plan.steps[0].name) == 2  # 18 x 16 x 16 = 4608 values
    client = plan.client()
    server = he_backend.Server.from_bytes(plan.to_bytes(), client.public_context())
    x = calib[:2].double().numpy()
    out = client.decrypt(server.run(client.encrypt(x)))
    with torch.no_grad():
        ref = pann(torch.as_tensor(x)).numpy()
    assert -np.log2(np.abs(out - ref).max() / np.abs(ref).max()) > 8
    np.testing.assert_allclose(plan.simulate(x), ref, rtol=1e-9, atol=1e-9)


def test_compiler_places_strided_outputs_in_the_layout_with_fewer_diagonals():
    import he_backend
    from polyact.convert.pipeline import convert

    torch.manual_seed(6)
    conv = nn.Conv2d(2, 8, 3, stride=2, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 3)).eval()
    pann, _ = convert(model, torch.randn(16, 2, 16, 16), degree=2)
    plan = he_backend.compile(pann, (2, 16, 16))
    first = plan.steps[0]
    rows, cols = np.nonzero(_torch_matrix(conv.double(), (2, 16, 16)))
    flat_diagonals = np.unique(cols - rows).size  # diagonals of the same map in the flat layout
    assert first.diagonal_count < flat_diagonals / 4
    np.testing.assert_array_equal(first.positions, Layout.gapped((8, 8, 8), 2, (16, 16)).positions)
    x = np.random.default_rng(0).normal(size=(4, 2, 16, 16))
    with torch.no_grad():
        np.testing.assert_allclose(plan.simulate(x), pann.double()(torch.as_tensor(x)).numpy(), rtol=1e-9, atol=1e-9)
