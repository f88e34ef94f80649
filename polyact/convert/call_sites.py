"""Find every non-polynomial operation of a model and give each call of an activation its own
named slot.

``prepare_structure`` traces the model with ``torch.fx`` (activations are leaves) and

- gives every *call* of an activation its own slot: a module called twice (torchvision's
  ``BasicBlock.relu``) becomes a :class:`CallSites` container whose calls are ``relu.0`` and
  ``relu.1``; functional calls (``F.gelu``, ``x.relu()``, ``torch.clamp``, in a loop or not)
  become modules named ``act_<node>``;
- fits elementwise functions of one tensor as one activation: ``x * torch.sigmoid(x)`` or
  ``x * F.relu6(x + 3) / 6`` (a product involving an activation of the same tensor) becomes
  one :class:`FunctionActivation` of ``x``;
- turns max pooling into the polynomial tree of :mod:`polyact.nn.maxpool` (``maxpool="poly"``),
  into average pooling (``"avg"``, reported) or refuses it (``"error"``);
- reports anything else that is not polynomial by name, with what to do.

Models that fx cannot trace fall back to swapping modules in place (a module called ``n``
times per forward, counted on an example input, becomes a :class:`CallSites` that dispatches
its calls in order); functional activations and other non-polynomial operations inside such
models are then refused at calibration time (:mod:`polyact.convert.eager_check`). The result is deterministic, so a saved PANN can be
rebuilt from its original model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .module_swap import count_calls, swap_modules
from .sites import Structure, UnsupportedOperationError
from .tracing import MAXPOOL_CHOICES, trace_sites


def prepare_structure(model: nn.Module, maxpool: str = "poly", use_fx: bool = True,
                      call_counts: dict[str, int] | None = None, example: torch.Tensor | None = None,
                      input_shape: list[int] | None = None) -> Structure:
    """Copy ``model`` (eval mode) and locate its activations; see the module docstring.

    ``maxpool``: ``"poly"`` (polynomial max, default), ``"avg"`` (average pooling instead:
    the network changes) or ``"error"`` (refuse). ``call_counts`` (module name -> calls per
    forward) or an ``example`` input tells module swapping which modules run several times.
    ``input_shape`` (no batch axis) lets tracing settle shape arithmetic and eval-mode identities
    (:mod:`polyact.convert.trace_time`, on zeros, so that a saved PANN is rebuilt the same way).
    """
    if maxpool not in MAXPOOL_CHOICES:
        raise ValueError(f"maxpool must be one of {MAXPOOL_CHOICES}, got {maxpool!r}")
    model = copy.deepcopy(model).eval()
    if use_fx:
        try:
            return trace_sites(model, maxpool, None if input_shape is None else torch.zeros((1, *input_shape)))
        except UnsupportedOperationError:
            raise
        except Exception as exc:  # fx raises many kinds of errors on dynamic models
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        reason = "fx disabled"
    counts = call_counts if call_counts is not None else count_calls(model, example)
    return swap_modules(model, maxpool, reason, counts)
