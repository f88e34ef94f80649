"""The ``torch.fx`` tracer of conversion and lowering: activations and polyact's own modules stay
whole (leaves), everything else is traced through."""
from __future__ import annotations

import os
import re

import torch
import torch.fx
from torch import nn

from ..activations import elementwise
from .maxpool import WindowGather
from .poly_act import PolyAct
from .sites import ActivationSlot, FunctionActivation


class LeafTracer(torch.fx.Tracer):
    """Keeps activations, polyact's own modules and pooling windows whole; records each node's
    source line (``node.meta["stack_trace"]``) so that refusals can name it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if elementwise.module_name(m) is not None or isinstance(
            m, (PolyAct, ActivationSlot, FunctionActivation, WindowGather)
        ):
            return True
        return super().is_leaf_module(m, qualname)


_SKIP = (os.path.dirname(os.path.abspath(torch.__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def source_line(node: torch.fx.Node) -> str:
    """``" (model.py:42)"``: the innermost line of the user's code that made ``node`` (recorded
    by :class:`LeafTracer`), or ``""``."""
    found = ""
    for match in re.finditer(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or ""):
        path = os.path.abspath(match.group(1))
        if not path.startswith(_SKIP):
            found = f" ({os.path.basename(path)}:{match.group(2)})"
    return found


def location(node: torch.fx.Node) -> str:
    """Where a traced operation runs: ``" in 'layer1.0.se' (model.py:42)"`` (the innermost
    module whose forward made it, and the source line)."""
    stack = node.meta.get("nn_module_stack") or {}
    module = f" in {next(reversed(stack))!r}" if stack else ""
    return module + source_line(node)
