"""The ``torch.fx`` tracer of conversion and lowering: activations and polyact's own modules stay
whole (leaves), everything else is traced through."""
from __future__ import annotations

import os
import sys

import torch
import torch.fx
from torch import nn

from ..activations import elementwise
from .maxpool import WindowGather
from .poly_act import PolyAct
from .sites import ActivationSlot, FunctionActivation


_SKIP = (os.path.dirname(os.path.abspath(torch.__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = "polyact_source"  # node.meta key: "model.py:42"


def user_frame() -> str:
    """``"model.py:42"``: the innermost frame of the user's code (not torch's, not polyact's)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_SKIP) and not path.startswith("<"):
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


class LeafTracer(torch.fx.Tracer):
    """Keeps activations, polyact's own modules and pooling windows whole; records each node's
    source line (``node.meta[SOURCE]``, cheaply: fx's own ``record_stack_traces`` imports a
    thousand modules) so that refusals can name it."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if elementwise.module_name(m) is not None or isinstance(
            m, (PolyAct, ActivationSlot, FunctionActivation, WindowGather)
        ):
            return True
        return super().is_leaf_module(m, qualname)

    def create_node(self, *args, **kwargs) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[SOURCE] = user_frame()
        return node


def source_line(node: torch.fx.Node) -> str:
    """``" (model.py:42)"``: the line of the user's code that made ``node``, or ``""``."""
    where = node.meta.get(SOURCE)
    return f" ({where})" if where else ""


def location(node: torch.fx.Node) -> str:
    """Where a traced operation runs: ``" in 'layer1.0.se' (model.py:42)"`` (the innermost
    module whose forward made it, and the source line)."""
    stack = node.meta.get("nn_module_stack") or {}
    module = f" in {next(reversed(stack))!r}" if stack else ""
    return module + source_line(node)
