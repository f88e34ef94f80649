"""torchvision-style model families convert without false refusals, and what cannot be converted is
refused up front, by layer and source line, with advice that works (issue 26; torchvision itself is
not installed here: the models below copy its code).

Planted faults and the tests that catch them:
- ``settle`` folding nothing -> the ShuffleNetV2 and ViT tests (refused: floordiv, eq, _assert);
- ``settle`` dropping no identity -> the stochastic-depth test (refused: stochastic_depth);
- ``rewrite_leaky_forms`` returning at once -> the leaky-form tests (refused: where, maximum, prelu, rrelu);
- ``_check_products`` removed -> the product tests (converted, refused only by lowering);
- ``EagerChecker.problem`` returning ``None`` -> the untraced-model tests (converted silently).
"""
import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x, groups: int):
    """torchvision.models.shufflenetv2.channel_shuffle"""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class ShuffleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.branch2 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                                     nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        out = channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)
        return self.head(out.mean([2, 3]))


class TinyViT(nn.Module):
    """torchvision.models.vision_transformer._process_input, then an MLP over the patches."""

    def __init__(self, image_size=8, patch_size=4, hidden_dim=6):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, stride=patch_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, 8), nn.GELU(), nn.Linear(8, hidden_dim))
        self.head = nn.Linear(hidden_dim, 3)

    def forward(self, x):
        n, c, h, w = x.shape
        p = self.patch_size
        torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
        torch._assert(w == self.image_size, f"Wrong image width! Expected {self.image_size} but got {w}!")
        n_h = h // p
        n_w = w // p
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        x = x.permute(0, 2, 1)
        x = x + self.mlp(x)
        return self.head(x.mean(1))


def stochastic_depth(input, p: float, mode: str, training: bool = True):
    """torchvision.ops.stochastic_depth (wrapped for fx, as torchvision does)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(1.0 - p)
    return input * noise.div_(1.0 - p) if p < 1.0 else input * noise


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input):
        return stochastic_depth(input, self.p, self.mode, self.training)


class DropBlock(nn.Module):
    """EfficientNet/ConvNeXt-style residual with stochastic depth and other eval identities."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.SiLU())
        self.stochastic_depth = StochasticDepth(0.2, "row")
        self.alpha = nn.AlphaDropout(0.1)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        result = self.stochastic_depth(self.block(x))
        result += x
        result = F.dropout2d(self.alpha(result), 0.1, self.training)
        return self.head(F.feature_alpha_dropout(result, 0.1, self.training).mean([2, 3]))


class Leaky(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.lin1, self.lin2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.w = nn.Parameter(torch.full((6,), 0.25))
        self.rrelu = nn.RReLU(0.1, 0.3)

    def forward(self, x):
        y = self.lin1(x)
        if self.form == "where":
            y = torch.where(y > 0, y, 0.1 * y)
        elif self.form == "where_lt":
            y = torch.where(y < 0, y * 0.2, y)
        elif self.form == "maximum":
            y = torch.maximum(y, 0.05 * y)
        elif self.form == "prelu":
            y = F.prelu(y, self.w)
        elif self.form == "rrelu":
            y = self.rrelu(y)
        elif self.form == "frrelu":
            y = F.rrelu(y, 0.1, 0.3, self.training)
        return self.lin2(y)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation"""
    def __init__(self, c=4, s=2):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, s, 1), nn.Conv2d(s, c, 1)
        self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, input):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(input)))))
        return scale * input


class WithSE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.se, self.head = nn.Conv2d(3, 4, 3, padding=1), SqueezeExcitation(), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.se(self.conv(x)).mean([2, 3]))


class GeluTanh(nn.Module):
    """BERT / GPT-2's hand-written gelu"""
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Cube(nn.Module):
    def forward(self, x):
        return x ** 3


class LearnedSwish(nn.Module):
    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


class Mlp(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.lin1, self.act, self.lin2 = nn.Linear(4, 6), act, nn.Linear(6, 3)

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.enc, self.head = nn.Linear(4, 8), nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.enc(self.embed(x).unsqueeze(1)).squeeze(1))


class GlobalMax(nn.Module):
    def __init__(self, pool=None):
        super().__init__()
        self.conv, self.pool, self.head = nn.Conv2d(3, 4, 3, padding=1), pool, nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv(x)
        y = self.pool(y) if self.pool is not None else y.amax(dim=(2, 3), keepdim=True)
        return self.head(y.flatten(1))


class Gate(nn.Module):
    """torch.where in a submodule (refused in every mode)"""
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        return torch.where(y > 1.0, y, torch.zeros_like(y))


class Dynamic(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op, self.gate, self.act, self.lin = op, Gate(), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x):
        y = self.act(self.gate(x)) if self.op == "where" else self.act(self.gate.lin(x)).amax(1, keepdim=True) * torch.ones(1, 4)
        return self.lin(y) if y.sum() > 0 else -self.lin(y)


# ---- tests ---------------------------------------------------------------------------------
import copy  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from polyact.convert.pipeline import convert  # noqa: E402
from polyact.convert.sites import UnsupportedOperationError  # noqa: E402
from polyact.ir.lower import lower  # noqa: E402
from polyact.nn.poly_act import PolyAct  # noqa: E402

torch.manual_seed(0)
X_VEC = torch.randn(64, 4)
X_IMG = torch.randn(16, 3, 8, 8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # each model's weights, whatever ran before


def _substituted(model: nn.Module, pann: nn.Module, report) -> nn.Module:
    """The original model with each activation module replaced by its fitted polynomial."""
    reference = copy.deepcopy(model)
    for layer in report.layers:
        poly = copy.deepcopy(pann.get_submodule(layer.name))
        poly.inplace = False
        reference.set_submodule(layer.name, poly)
    return reference


@pytest.mark.parametrize("family", [ShuffleBlock, TinyViT, DropBlock], ids=lambda f: f.__name__)
def test_shape_arithmetic_and_eval_identities_are_settled_at_trace_time(family):
    model = family().eval()
    pann, report = convert(model, X_IMG, degree=8)
    assert not any("could not trace" in n for n in report.notes)
    reference = _substituted(model, pann, report)
    x = torch.randn(5, 3, 8, 8)  # another batch size than the two trace-time runs
    with torch.no_grad():
        expected, got = reference(x), pann(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    graph = lower(pann, (3, 8, 8))
    assert np.abs(graph.forward(x.double().numpy()) - expected.double().numpy()).max() < 1e-5 * float(expected.abs().max())
    if family is DropBlock:
        dropped = [n for n in report.notes if "identity in eval mode: dropped" in n]
        assert len(dropped) == 4 and "'stochastic_depth'" in dropped[0]
    else:
        assert any("settled at trace time" in n for n in report.notes)


LEAKY = {"where": 0.1, "where_lt": 0.2, "maximum": 0.05, "rrelu": 0.2, "frrelu": 0.2, "prelu": 0.25}


@pytest.mark.parametrize("form", sorted(LEAKY))
def test_leaky_forms_are_fitted_as_leaky_relus_with_their_slope(form):
    model = Leaky(form).eval()
    pann, report = convert(model, X_VEC, degree=15)
    (layer,) = report.layers
    assert layer.target in ("leaky_relu", "prelu")
    slope = LEAKY[form]
    y = model.lin1(X_VEC).detach()
    act = pann.get_submodule(layer.name)
    with torch.no_grad():
        fitted = act(y).double().numpy()
    exact = np.where(y.numpy() > 0, y.numpy(), slope * y.numpy())  # numpy's leaky relu of the stated slope
    assert np.abs(fitted - exact).max() <= layer.max_error * 1.001 + 1e-6
    assert layer.max_error < 0.02  # so that a wrong slope (off by >= 0.05 on |y| ~ 2) would be seen
    with torch.no_grad():
        assert torch.allclose(pann(X_VEC), model.lin2(act(y)), atol=1e-5)


def test_rrelu_module_in_an_untraced_model_is_a_leaky_relu():
    model = Leaky("rrelu").eval()
    pann, report = convert(model, X_VEC, degree=15, use_fx=False)
    assert isinstance(pann.rrelu, PolyAct) and any("nn.LeakyReLU(0.2)" in n for n in report.notes)


@pytest.mark.parametrize("model, data, layer", [
    (WithSE, X_IMG, "'se'"), (lambda: Mlp(GeluTanh()), X_VEC, "'act'"), (lambda: Mlp(Cube()), X_VEC, "'act'"),
    (lambda: Mlp(LearnedSwish()), X_VEC, "'act'"),
], ids=["squeeze_excitation", "gelu_tanh_by_hand", "cube", "learned_swish"])
def test_products_of_input_dependent_tensors_are_refused_up_front_by_layer(model, data, layer):
    with pytest.raises(UnsupportedOperationError, match=rf"product '\w+' in {layer} \(test_convert_forms.py:\d+\)"):
        convert(model().eval(), data, degree=8)


def test_transformer_encoder_layer_is_refused_naming_its_layernorm_and_softmax():
    with pytest.raises(UnsupportedOperationError, match=r"'enc.norm1'.*data-dependent") as info:
        convert(Encoder().eval(), X_VEC, degree=8)
    assert "'enc.self_attn': attention needs a softmax" in str(info.value)


def test_amax_is_refused_with_advice_that_works():
    with pytest.raises(UnsupportedOperationError, match=r"amax.*nn.MaxPool2d\(kernel_size=\(H, W\)\)"):
        convert(GlobalMax().eval(), X_IMG, degree=8)
    model = GlobalMax(nn.MaxPool2d((8, 8))).eval()  # the advice, followed
    pann, report = convert(model, X_IMG, degree=8)
    assert report.depth is not None
    with torch.no_grad():
        expected, got = model(X_IMG), pann(X_IMG)
    bound = sum(layer.max_error for layer in report.layers) / 2 * float(model.head.weight.abs().sum(1).max())
    assert float((got - expected).abs().max()) <= bound * 1.001


@pytest.mark.parametrize("op, what, where", [("where", "torch.where with a boolean mask", "gate"),
                                              ("amax", r".amax\(\)", "the model's forward")])
def test_untraced_models_refuse_what_the_traced_path_refuses_by_module_and_line(op, what, where):
    """fx fails on the data-dependent ``if``; the fallback must not convert where/amax silently."""
    with pytest.raises(UnsupportedOperationError, match=rf"in .{where}. \(test_convert_forms.py:\d+\): {what}"):
        convert(Dynamic(op).eval(), X_VEC, degree=8)


def test_where_with_module_swapping_is_refused_not_a_raw_torch_error():
    with pytest.raises(UnsupportedOperationError, match=r"in '0' \(test_convert_forms.py:\d+\): torch.where"):
        convert(nn.Sequential(Gate(), nn.ReLU(), nn.Linear(4, 3)).eval(), X_VEC, degree=8, use_fx=False)


def test_a_settled_pann_saves_and_reloads_identically(tmp_path):
    """The rebuild settles the same shape arithmetic and identities (from the saved input shape)."""
    from polyact.convert.storage import load_pann, save_pann

    model = DropBlock().eval()
    shuffle = ShuffleBlock().eval()
    for original in (model, shuffle):
        pann, _ = convert(original, X_IMG, degree=8)
        save_pann(pann, tmp_path / "pann.npz")
        loaded = load_pann(tmp_path / "pann.npz", model=original)
        x = torch.randn(3, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(loaded(x), pann(x))
