"""Which torch operations are polynomial, which are activations polyact replaces, and what to
tell the user about the rest.

Anything not listed is treated as unsupported: conversion never keeps an unknown operation
silently, because an encrypted backend could not evaluate it.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

# functional activations -> registry name
ACTIVATION_FUNCTIONS: dict[Callable, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu",
    F.leaky_relu: "leaky_relu", F.gelu: "gelu", F.silu: "silu",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
    F.elu: "elu", F.selu: "selu", torch.selu: "selu", F.softplus: "softplus", F.mish: "mish",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.abs: "abs", torch.sign: "sign",
    F.leaky_relu_: "leaky_relu", F.elu_: "elu", torch.sigmoid_: "sigmoid", torch.tanh_: "tanh",
}
ACTIVATION_METHODS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
    "tanh": "tanh", "tanh_": "tanh", "abs": "abs", "abs_": "abs", "sign": "sign",
}

POLYNOMIAL_FUNCTIONS: set[Callable] = {
    operator.add, operator.sub, operator.mul, operator.neg, operator.pos, operator.getitem,
    operator.iadd, operator.isub, operator.imul, getattr,
    torch.add, torch.sub, torch.mul, torch.neg, torch.matmul, torch.mm, torch.bmm,
    torch.flatten, torch.cat, torch.stack, torch.reshape, torch.permute, torch.transpose,
    torch.squeeze, torch.unsqueeze, torch.sum, torch.mean, torch.square,
    F.linear, F.conv1d, F.conv2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.dropout, F.batch_norm, F.pad, F.interpolate, F.pixel_shuffle,
    torch.chunk, torch.split, torch.narrow, torch.flip, torch.roll, torch.t,
}
POLYNOMIAL_METHODS: set[str] = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "size", "dim",
    "unsqueeze", "squeeze", "expand", "expand_as", "mean", "sum", "add", "sub", "mul", "neg",
    "matmul", "float", "double", "to", "type_as", "clone", "detach", "chunk", "split",
    "repeat", "square", "add_", "sub_", "mul_", "view_as", "reshape_as", "t", "narrow", "flip", "roll",
}
POLYNOMIAL_MODULES: tuple[type, ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ConvTranspose1d, nn.ConvTranspose2d,
)
MAXPOOL_MODULES: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.MaxPool1d: lambda m: nn.AvgPool1d(m.kernel_size, m.stride, m.padding),
    nn.MaxPool2d: lambda m: nn.AvgPool2d(m.kernel_size, m.stride, m.padding),
    nn.AdaptiveMaxPool1d: lambda m: nn.AdaptiveAvgPool1d(m.output_size),
    nn.AdaptiveMaxPool2d: lambda m: nn.AdaptiveAvgPool2d(m.output_size),
}
MAXPOOL_FUNCTIONS: dict[Callable, Callable] = {
    F.max_pool1d: F.avg_pool1d, F.max_pool2d: F.avg_pool2d,
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d, F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
}

MAX_HINT = ("a max over a tensor is not a polynomial; use nn.MaxPool2d (converted with maxpool='poly'), average "
            "pooling or a mean")
AMAX_HINT = ("a max over tensor axes is not a polynomial; for a global max pool x.amax(dim=(2, 3), keepdim=True) use "
             "nn.MaxPool2d(kernel_size=(H, W)) over the whole map (a polynomial max tree with maxpool='poly'), or "
             "x.mean(dim=(2, 3), keepdim=True) and fine-tune")
MAXIMUM_HINT = ("torch.maximum of two tensors is not a polynomial; torch.maximum(x, a * x) with 0 <= a <= 1 is a leaky "
                "ReLU and is fitted as one: write it in that form (one tensor x and a number a) or use F.leaky_relu")
WHERE_HINT = ("torch.where is a step function of its mask, not a polynomial; torch.where(x > 0, x, a * x) is a leaky "
              "ReLU and is fitted as one: write it in that form (x compared with 0, a a number) or use F.leaky_relu")

HINTS: dict[Any, str] = {
    F.softmax: "drop the final softmax: argmax of the logits is unchanged, and the client can apply softmax after decryption",
    F.log_softmax: "drop the final log_softmax: argmax of the logits is unchanged; apply it on the client",
    torch.softmax: "drop the final softmax: argmax of the logits is unchanged; apply it on the client",
    "softmax": "drop the final softmax: argmax of the logits is unchanged; apply it on the client",
    nn.Softmax: "drop the final softmax: argmax of the logits is unchanged; apply it on the client",
    nn.LogSoftmax: "drop the final log_softmax: argmax of the logits is unchanged; apply it on the client",
    nn.LayerNorm: "LayerNorm divides by a data-dependent standard deviation; use BatchNorm (affine at inference) instead",
    F.layer_norm: "layer_norm divides by a data-dependent standard deviation; use BatchNorm (affine at inference) instead",
    nn.GroupNorm: "GroupNorm divides by a data-dependent standard deviation; use BatchNorm instead",
    torch.max: MAX_HINT, torch.amax: AMAX_HINT, "max": MAX_HINT, "amax": AMAX_HINT,
    torch.maximum: MAXIMUM_HINT, "maximum": MAXIMUM_HINT, torch.where: WHERE_HINT, "where": WHERE_HINT,
    F.multi_head_attention_forward: "attention needs a softmax of products of activations; replace it by a polynomial "
                                    "mixing layer (e.g. an MLP-Mixer token MLP)",
    nn.MultiheadAttention: "attention needs a softmax of products of activations; replace it by a polynomial mixing layer (e.g. an MLP-Mixer token MLP)",
    F.scaled_dot_product_attention: "attention needs a softmax; replace it by a polynomial mixing layer (e.g. an MLP-Mixer token MLP)",
    operator.truediv: "division by a tensor is not a polynomial; divide by a constant, or fold the scale into a linear layer",
    torch.div: "division by a tensor is not a polynomial; divide by a constant, or fold the scale into a linear layer",
    torch.log: "log is not a polynomial, and polyact fits no log activation: remove it, or apply it on the client after decryption",
    torch.sqrt: "sqrt is not a polynomial, and convert fits no sqrt: remove it, or apply it on the client after decryption",
    torch.rsqrt: "rsqrt is not a polynomial; fold normalisation statistics into a linear layer",
    nn.Embedding: "embedding lookups are not polynomial; embed on the client before encryption",
}

GENERIC_HINT = (
    "not a polynomial operation polyact knows; rewrite it with supported layers (linear, conv, "
    "batchnorm, average pooling, residual adds) and activations of one tensor (nn.ReLU, F.gelu, torch.clamp, ...)"
)


def hint_for(key: Any) -> str:
    """What to do about an unsupported function, method name or module type."""
    return HINTS.get(key, GENERIC_HINT)


def describe(key: Any) -> str:
    """A readable name for a function, method name or module type."""
    if isinstance(key, str):
        return f".{key}()"
    if isinstance(key, type):
        return f"nn.{key.__name__}" if key.__module__.startswith("torch.nn") else key.__name__
    name = getattr(key, "__name__", repr(key))
    if getattr(F, name, None) is key:
        return f"F.{name}"
    if getattr(torch, name, None) is key:
        return f"torch.{name}"
    return name


def is_constant_divisor(arg: Any) -> bool:
    """True for a Python number (division by it is a scalar multiplication)."""
    return isinstance(arg, (int, float)) and not isinstance(arg, bool)
