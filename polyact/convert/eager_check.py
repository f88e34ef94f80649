"""What module swapping cannot see: the operations a model that ``torch.fx`` cannot trace runs
outside its activation modules, checked while it calibrates.

:class:`EagerChecker` is a ``TorchFunctionMode`` that sees every top-level torch call of the
forward (calls inside an activation slot or a polynomial max pool are theirs) and applies the
rules of the traced path (:mod:`polyact.convert.supported_ops`): activations called as functions
cannot be swapped; ``torch.where``, ``.amax()``, division by a tensor, a boolean mask in tensor
maths and anything else that is not polynomial is refused, each with the module path and the
source line where it runs and what to do. Comparisons whose result only steers Python control
flow (``if x.sum() > 0``) are allowed: the mask itself is refused only where tensor maths uses it.
"""
from __future__ import annotations

import operator
import os
import traceback
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..activations import elementwise
from ..nn.maxpool import PolyMaxPool
from ..nn.sites import ActivationSlot
from .supported_ops import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    MAXPOOL_FUNCTIONS,
    POLYNOMIAL_FUNCTIONS,
    POLYNOMIAL_METHODS,
    describe,
    hint_for,
    is_constant_divisor,
)

# tensor methods that read sizes, compare, convert or steer control flow (no tensor maths)
_HARMLESS_METHODS = {
    "__get__", "dim", "size", "numel", "__len__", "__bool__", "item", "tolist", "__index__", "__int__", "__float__",
    "__format__", "__repr__", "__hash__", "stride", "is_contiguous", "data_ptr", "__getitem__", "__setitem__",
    "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
    "__neg__", "__pos__", "__matmul__", "__rmatmul__", "gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__",
    "__ge__", "__le__", "__eq__", "__ne__", "any", "all", "copy_", "requires_grad_", "__iter__", "unbind", "select",
    "__contains__", "rsub",
}
_CONTROL = {"__bool__", "item", "tolist", "any", "all", "__get__", "dim", "size", "numel", "__len__", "__format__",
            "__repr__", "__iter__", "__index__", "__int__", "__float__"}
_COMPARISONS = {"gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__",
                torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.greater, torch.less,
                operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne}
_DIVISIONS = {"div", "div_", "__truediv__", "__itruediv__", "true_divide", torch.div, torch.true_divide}
MASK_HINT = ("a boolean mask (a comparison's result) used in tensor maths is a step function, not a polynomial; "
             "for a leaky ReLU written as torch.where(x > 0, x, a * x) use F.leaky_relu(x, a) or nn.LeakyReLU(a), "
             "which are fitted as activations")
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))


def _key(func: Any) -> Any:
    """A tensor method by its name (as the traced path sees ``call_method``), else the function."""
    qualname = getattr(func, "__qualname__", "") or ""
    if qualname.startswith(("TensorBase.", "Tensor.", "getset_descriptor.")):
        return func.__name__
    return func


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def problem(func: Any, args: tuple, kwargs: dict) -> str | None:
    """Why ``func(*args, **kwargs)`` cannot run in a polynomial network (``None``: it can)."""
    key = _key(func)
    if key in _CONTROL:
        return None
    if key not in _COMPARISONS and any(t.dtype == torch.bool for t in _tensors((args, kwargs))):
        return f"{describe(key)} with a boolean mask: {MASK_HINT}"
    if key in ACTIVATION_FUNCTIONS or func in elementwise.FUNCTIONS or (
            isinstance(key, str) and (key in ACTIVATION_METHODS or key in elementwise.METHODS)):
        return (f"{describe(key)}: an activation called as a function, which module swapping cannot replace; use an "
                "activation module (nn.ReLU, nn.GELU, ...) or make the forward traceable by torch.fx")
    if key in _DIVISIONS:
        return None if is_constant_divisor(args[1] if len(args) > 1 else kwargs.get("other")) else \
            f"{describe(key)}: {hint_for(operator.truediv)}"
    if key in ("pow", "__pow__", torch.pow):
        exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
        ok = isinstance(exponent, int) and not isinstance(exponent, bool) and exponent >= 0
        return None if ok else f"{describe(key)}: only non-negative integer powers are polynomial"
    if func in MAXPOOL_FUNCTIONS:
        return (f"{describe(key)}: functional max pooling is not swapped in an untraced model; use nn.MaxPool2d "
                "(converted by maxpool='poly') or make the forward traceable by torch.fx")
    if key in POLYNOMIAL_FUNCTIONS or key in POLYNOMIAL_METHODS or key in _HARMLESS_METHODS or key in _COMPARISONS:
        return None
    return f"{describe(key)}: {hint_for(key)}"


def _source_line() -> str:
    """The innermost frame of the user's code (not torch's, not polyact's)."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if not path.startswith((_HERE, _TORCH)):
            return f"{os.path.basename(path)}:{frame.lineno}"
    return "unknown line"


class EagerChecker(TorchFunctionMode):
    """Records every non-polynomial torch call of an untraced forward with where it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: dict[str, None] = {}  # ordered set of "- what in 'module' (file:line)"
        self.depth = 0
        self.modules: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0:
            why = problem(func, args, kwargs)
            if why is not None:
                where = self.modules[-1] if self.modules else "the model's forward"
                self.problems[f"  - in {where!r} ({_source_line()}): {why}"] = None
        return func(*args, **kwargs)

    def attach(self, model: nn.Module) -> list:
        """Hooks: slots and polynomial pools run unchecked; every module's path is tracked."""
        handles = []
        for name, module in model.named_modules():
            if isinstance(module, (ActivationSlot, PolyMaxPool)):
                handles.append(module.register_forward_pre_hook(lambda *_: setattr(self, "depth", self.depth + 1)))
                handles.append(module.register_forward_hook(lambda *_: setattr(self, "depth", self.depth - 1)))
            elif name:
                handles.append(module.register_forward_pre_hook(lambda *_, n=name: self.modules.append(n)))
                handles.append(module.register_forward_hook(lambda *_: self.modules.pop() and None))
        return handles

    def error(self, reason: str) -> str | None:
        """The refusal for everything recorded, or ``None``."""
        if not self.problems:
            return None
        return (f"the model could not be traced by torch.fx ({reason}); module swapping found operations a "
                "polynomial network cannot evaluate:\n" + "\n".join(self.problems))
