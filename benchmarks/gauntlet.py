"""The gauntlet: model families written the way popular codebases write them, trained briefly on
digits, converted to PANNs, compared with the original, compiled and run encrypted.

    python benchmarks/gauntlet.py [--epochs 10] [--encrypted 2] [--only resnet_basic vgg_maxpool]

Prints one row per architecture (converted or refused and why, depth, accuracy of the original
and of the PANN at the chosen degree, agreement of the plan's float64 twin and of CKKS with the
PANN) and ends with one JSON line. ``tests/test_gauntlet.py`` runs the same entries.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import he_backend
import polyact
from polyact import data
from polyact.convert.sites import UnsupportedOperationError
from polyact.train.loop import evaluate, predict, train_classifier

KEY_MEMORY = 512 << 20  # Galois keys per plan: client and server keys live in one process here


# ---- torchvision-style residual blocks -----------------------------------------------------
def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: one inplace ReLU module called twice, ``out += identity``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (1x1 reduce, 3x3, 1x1 expand x4), one ReLU called three times."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block: Callable[..., nn.Module], channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = conv3x3(1, channels), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        self.layer1 = block(channels, out_channels // getattr(block, "expansion", 1), 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(out_channels, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- MobileNetV2 inverted residual (ReLU6, depthwise) ---------------------------------------
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU6(inplace=True),
            InvertedResidual(4, 4, 1, 2),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * 16, 10))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# ---- VGG with max pooling ---------------------------------------------------------------------
class VGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(8 * 2 * 2, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


# ---- SqueezeNet fire module (torch.cat) ---------------------------------------------------------
class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, e1, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True), Fire(8, 4, 4, 4))
        # a linear head (torchvision's conv + global-pool head does not train at this width)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


# ---- LeNet-5 (tanh, average pooling) ---------------------------------------------------------
class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.s2 = nn.Conv2d(1, 4, 5, padding=2), nn.AvgPool2d(2)
        self.c3, self.s4 = nn.Conv2d(4, 8, 3, padding=1), nn.AvgPool2d(2, ceil_mode=True)
        self.f5, self.f6 = nn.Linear(8 * 2 * 2, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.s2(torch.tanh(self.c1(x)))
        x = self.s4(torch.tanh(self.c3(x)))
        return self.f6(torch.tanh(self.f5(x.view(x.size(0), -1))))


# ---- PReLU net (Conv1d, BatchNorm1d, dilated, view) ----------------------------------------
class PReLUNet(nn.Module):
    """Rows of the image as a sequence: Conv1d + BatchNorm1d + per-channel PReLU, dilated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.PReLU(8)
        self.conv2, self.act2 = nn.Conv1d(8, 8, 3, padding=2, dilation=2), nn.PReLU(8, init=0.1)
        self.fc = nn.Linear(8 * 8, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], 8, 8)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        return self.fc(x.flatten(1))


# ---- MLP-Mixer block without LayerNorm --------------------------------------------------------
class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.token_mlp = nn.Sequential(nn.Linear(tokens, hidden), nn.GELU(), nn.Linear(hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):  # (N, tokens, dim)
        x = x + self.token_mlp(x.transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(x)


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, kernel_size=2, stride=2)  # 2x2 patches -> 16 tokens of 8
        self.block = MixerBlock(16, 8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x).flatten(2).permute(0, 2, 1)
        return self.head(self.block(x).mean(dim=1))


# ---- a learnable activation of the zoo (and nearest upsampling) --------------------------------
class LearnableCNN(nn.Module):
    def __init__(self, activation: str = "aulu") -> None:
        super().__init__()
        self.down = nn.AvgPool2d(2)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.act = polyact.get_activation(activation)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.act2 = polyact.get_activation(activation)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = self.up(self.act(self.conv(self.down(x))))
        return self.fc(self.act2(self.conv2(x)).flatten(1))


# the VGG entry (depth 23, N = 32768) was OOM-killed at 18.7 GB resident in the encrypted run
MAX_ENCRYPTED_DEPTH = 16


@dataclass
class Entry:
    """One architecture of the gauntlet and how it is converted."""

    build: Callable[[], nn.Module]
    convert: dict[str, Any] = field(default_factory=dict)


ENTRIES: dict[str, Entry] = {
    "resnet_basic": Entry(lambda: ResNet(BasicBlock, 4, 8), {"degree": 3}),
    "resnet_bottleneck": Entry(lambda: ResNet(Bottleneck, 4, 8), {"degree": 3}),
    "mobilenetv2_relu6": Entry(MobileNetV2, {"degree": 3}),
    "vgg_maxpool": Entry(VGG, {"degree": 3, "maxpool_alpha": 4}),
    "squeezenet_fire": Entry(SqueezeNet, {"degree": 3}),
    "lenet5_tanh": Entry(LeNet5, {"degree": 3}),
    "prelu_conv1d": Entry(PReLUNet, {"degree": 3}),
    "mixer_gelu": Entry(Mixer, {"degree": 3}),
    "learnable_aulu": Entry(LearnableCNN, {"degree": 3}),
}


def prepare(name: str, digits: data.Dataset, epochs: int, seed: int = 0) -> dict[str, Any]:
    """Train, convert and compile one entry; returns the row (and the objects under ``_``)."""
    entry = ENTRIES[name]
    torch.manual_seed(seed)
    model = entry.build()
    started = time.perf_counter()
    train_classifier(model, digits, epochs=epochs, lr=1e-2, seed=seed)
    model.eval()
    row: dict[str, Any] = {"architecture": name, "degree": entry.convert.get("degree"),
                           "accuracy_original": round(evaluate(model, digits.x_test, digits.y_test), 2)}
    try:
        pann, report = polyact.convert(model, digits, **entry.convert)
    except UnsupportedOperationError as exc:
        return {**row, "converted": False, "why": str(exc).splitlines()[1].strip()}
    logits = predict(pann, digits.x_test)
    row.update(converted=True, depth=report.depth, layers=len(report.layers),
               accuracy_pann=round(100.0 * (logits.argmax(1) == digits.y_test).float().mean().item(), 2),
               agreement_with_original=round(100.0 * (logits.argmax(1) == predict(model, digits.x_test).argmax(1)).float().mean().item(), 2))
    try:
        plan = he_backend.compile(pann, digits.input_shape, packing="sample", key_memory=KEY_MEMORY)
    except Exception as exc:  # ParameterError (too deep) or a layer the backend cannot lower
        return {**row, "compiled": False, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    x = digits.x_test[:64].double()
    with torch.no_grad():
        reference = pann.double()(x).numpy()
    twin = plan.simulate(x.numpy())
    row.update(compiled=True, ring=plan.params.poly_modulus_degree, scale_bits=plan.params.scale_bits,
               twin_agreement=round(100.0 * float((twin.argmax(1) == reference.argmax(1)).mean()), 2),
               twin_max_error=float(np.abs(twin - reference).max()),
               prepare_seconds=round(time.perf_counter() - started, 1))
    row["_"] = (model, pann, report, plan)
    return row


def run_encrypted(row: dict[str, Any], digits: data.Dataset, samples: int) -> dict[str, Any]:
    """Encrypt ``samples`` test images, run the plan on a server holding no secret key, decrypt,
    and compare top-1 with the plaintext PANN."""
    _, pann, _, plan = row["_"]
    x = digits.x_test[:samples].double()
    with torch.no_grad():
        reference = pann.double()(x).numpy()
    started = time.perf_counter()
    client = plan.client()
    server = he_backend.Server.from_bytes(plan.to_bytes(), client.public_context())
    out = client.decrypt(server.run(client.encrypt(x.numpy())))
    return {"encrypted_samples": samples,
            "encrypted_agreement": round(100.0 * float((out.argmax(1) == reference.argmax(1)).mean()), 2),
            "encrypted_max_error": float(np.abs(out - reference).max()),
            "encrypted_seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'architecture':<20} {'converted':<34} {'depth':>5} {'deg':>4} {'acc orig':>8} {'acc PANN':>8} {'twin':>6} {'CKKS':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        status = "yes" if r.get("converted") and r.get("compiled", True) else f"no: {r.get('why', '')}"[:34]
        ckks = f"{r['encrypted_agreement']:.0f}% ({r['encrypted_samples']})" if "encrypted_agreement" in r else \
            ("too deep" if "encrypted" in r else "-")
        fmt = lambda k, spec: format(r[k], spec) if r.get(k) is not None else "-"  # noqa: E731
        lines.append(f"{r['architecture']:<20} {status:<34} {fmt('depth', '>5')} {fmt('degree', '>4')} "
                     f"{fmt('accuracy_original', '>8.2f')} {fmt('accuracy_pann', '>8.2f')} {fmt('twin_agreement', '>6.1f')} {ckks:>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--encrypted", type=int, default=2, help="encrypted test samples per architecture (0: none)")
    parser.add_argument("--only", nargs="*", choices=sorted(ENTRIES), default=None)
    parser.add_argument("--max-encrypted-depth", type=int, default=MAX_ENCRYPTED_DEPTH,
                        help="run deeper plans in plaintext only (N=32768 plans need >18 GB here)")
    args = parser.parse_args()
    from machine import finish, start  # benchmarks/machine.py: threads; wall, CPU seconds and load

    meter = start()
    digits = data.digits()
    rows = []
    for name in args.only or list(ENTRIES):
        row = prepare(name, digits, args.epochs)
        if args.encrypted and "_" in row and row["depth"] > args.max_encrypted_depth:
            row["encrypted"] = f"skipped: depth {row['depth']} > --max-encrypted-depth {args.max_encrypted_depth}"
        elif args.encrypted and "_" in row:
            row.update(run_encrypted(row, digits, args.encrypted))
        row.pop("_", None)
        rows.append(row)
        print(table(rows).splitlines()[-1], flush=True)
    print(table(rows))
    print(finish(meter, rows))


if __name__ == "__main__":
    main()
