"""Model zoo for demos, tests and benchmarks: an MLP, a LeNet-style CNN and a small ResNet,
each with a selectable activation from :mod:`polyact.activations`.

:func:`build_model` records how the model was built, so a saved PANN can be rebuilt from its
file alone (:func:`polyact.load_pann`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from .activations.registry import get_activation

FACTORY_ATTR = "polyact_factory"


class MLP(nn.Module):
    """``Flatten -> [Linear -> activation] * len(hidden) -> Linear``."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (64,), activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), get_activation(activation)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class LeNet(nn.Module):
    """Two ``conv -> batchnorm -> activation -> pool`` stages and a linear classifier.

    For 8x8 inputs the kernels are 3x3, for larger ones 5x5 (padding keeps the size); ``pool``
    is ``"avg"`` (polynomial) or ``"max"`` (converted to average pooling by polyact).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        activation: str = "relu",
        channels: Sequence[int] = (8, 16),
        pool: str = "avg",
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"LeNet needs an image size divisible by 4, got {image_size}")
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        kernel = 3 if image_size <= 8 else 5
        c1, c2 = channels
        pooling = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel, padding=kernel // 2),
            norm(c1),
            get_activation(activation),
            pooling(2),
            nn.Conv2d(c1, c2, kernel, padding=kernel // 2),
            norm(c2),
            get_activation(activation),
            pooling(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * (image_size // 4) ** 2, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """``act(bn(conv(act(bn(conv(x))))) + shortcut(x))``, the residual add of a ResNet."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = get_activation(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.act2 = get_activation(activation)

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: stem conv, one :class:`BasicBlock` per entry of ``channels`` (stride 2
    where the width changes, as in ResNet-20's stages), global average pooling and a linear
    classifier. ``channels=(16,) * 3 + (32,) * 3 + (64,) * 3`` is ResNet-20's layout."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        activation: str = "relu",
        channels: Sequence[int] = (8, 16),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            get_activation(activation),
        )
        blocks, width = [], channels[0]
        for c in channels:
            blocks.append(BasicBlock(width, c, 1 if c == width else 2, activation))
            width = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def _mlp(input_shape: Sequence[int], num_classes: int, activation: str, **kw: Any) -> nn.Module:
    features = 1
    for size in input_shape:
        features *= size
    return MLP(features, num_classes, activation=activation, **kw)


def _cnn(input_shape: Sequence[int], num_classes: int, activation: str, **kw: Any) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"the CNN needs square images (C, H, H), got input shape {tuple(input_shape)}")
    return LeNet(input_shape[0], input_shape[1], num_classes, activation, **kw)


def _resnet(input_shape: Sequence[int], num_classes: int, activation: str, **kw: Any) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"the ResNet needs images (C, H, W), got input shape {tuple(input_shape)}")
    return ResNet(input_shape[0], num_classes, activation, **kw)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, activation: str = "relu", **kwargs: Any
) -> nn.Module:
    """A zoo model (``mlp``, ``cnn``, ``resnet``) for inputs of ``input_shape`` (without the
    batch axis); extra keyword arguments go to the architecture (e.g. ``hidden=(32,)``)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    model = ARCHITECTURES[name](tuple(input_shape), num_classes, activation, **kwargs)
    spec = dict(name=name, input_shape=list(input_shape), num_classes=num_classes, activation=activation, **kwargs)
    setattr(model, FACTORY_ATTR, ("polyact.models:build_model", spec))
    return model


def resolve_factory(path: str) -> Callable[..., nn.Module]:
    """Import a model factory given as ``"package.module:function"`` (importable from
    ``sys.path`` or the current directory) or ``"path/to/file.py:function"``.

    This runs the named module's code: call it only with names the user chose (see
    :func:`polyact.convert.storage.load_pann` for how files are kept from naming code)."""
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"a model factory is 'package.module:function' or 'path/to/file.py:function', got {path!r}")
    try:
        module = _import_file(module_name) if module_name.endswith(".py") else _import_from_cwd(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, OSError) as exc:
        raise ValueError(f"cannot import model factory {path!r}: {exc}") from exc


def _import_from_cwd(name: str):
    """``importlib.import_module(name)`` with the current directory importable, as ``python -m``
    makes it (the ``polyact`` console script does not)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(cwd)


def _import_file(filename: str):
    """The module defined by a ``.py`` file (registered under a name derived from its path)."""
    file = Path(filename).resolve()
    if not file.is_file():
        raise ImportError(f"{filename} does not exist")
    name = "polyact_user_" + "_".join(p for p in file.with_suffix("").parts if p.isidentifier())
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
