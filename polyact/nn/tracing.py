"""The ``torch.fx`` tracer of conversion and lowering: activations and polyact's own modules stay
whole (leaves), everything else is traced through."""
from __future__ import annotations

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
