"""The modules a PANN is made of: :class:`PolyAct` (a polynomial activation with its range
monitor), the polynomial max-pooling tree, and the call-site modules conversion installs while it
calibrates; plus the ``torch.fx`` tracer that keeps them whole."""
from .maxpool import PolyMaxPool, WindowGather
from .poly_act import (
    OutOfRangeError,
    OutOfRangeWarning,
    PolyAct,
    out_of_range_fraction,
    polyact_layers,
    range_report,
    reset_range_counters,
    set_strict,
)
from .sites import ActivationSlot, CallSites, FunctionActivation
from .tracing import LeafTracer

__all__ = ["ActivationSlot", "CallSites", "FunctionActivation", "LeafTracer", "OutOfRangeError", "OutOfRangeWarning",
           "PolyAct", "PolyMaxPool", "WindowGather", "out_of_range_fraction", "polyact_layers", "range_report",
           "reset_range_counters", "set_strict"]
