"""What a traced graph can settle at trace time, from two example runs (batch sizes 1 and 2):

* **shape arithmetic**: a value that is not a tensor (``x.size(1) // groups``, ``h == 224``,
  ``torch._assert(...)``, ``n_h * n_w``) and is the same for both batch sizes is a constant of
  the network: it is put in its readers' arguments and its nodes are removed. Values that follow
  the batch size (``x.size(0)``) stay in the graph (reading sizes is allowed).
* **eval-mode identities**: dropout variants and stochastic depth (``torchvision.ops.
  stochastic_depth``, ``F.alpha_dropout``, ``nn.AlphaDropout``, ...) whose output is their input
  in both runs are dropped, each with a note.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx

from ..ir.lower import ValueRecorder
from ..nn.tracing import location

_IDENTITY_NAMES = ("dropout", "drop_path", "droppath", "stochastic_depth", "stochasticdepth")


def _record(gm: torch.fx.GraphModule, example: torch.Tensor) -> dict[torch.fx.Node, Any] | None:
    recorder = ValueRecorder(gm)
    try:
        with torch.no_grad():
            recorder.run(example.clone())
    except Exception:  # a model that needs other inputs: nothing is settled at trace time
        return None
    return recorder.values


def _constant(value: Any) -> Any:
    """``value`` as a graph argument if it is a plain constant (not a tensor), else ``...``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list, torch.Size)) and all(isinstance(v, (bool, int, float)) for v in value):
        return tuple(value)
    return ...


def _name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


_SHAPE_READERS = {"size", "dim", "numel"}


def _shape_like(node: torch.fx.Node, shape_nodes: set[torch.fx.Node]) -> bool:
    """Computed from sizes only: ``x.size()``, ``x.shape``, ``x.dim()`` and arithmetic on them."""
    if node.op == "call_method" and node.target in _SHAPE_READERS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1:2] in (("shape",), ("ndim",)):
        return True
    return all(i in shape_nodes for i in node.all_input_nodes)  # no inputs left: computed from constants


def _substitute(node: torch.fx.Node, value: Any) -> None:
    for user in list(node.users):
        user.args = torch.fx.node.map_arg(user.args, lambda a: value if a is node else a)
        user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a: value if a is node else a)


def settle(gm: torch.fx.GraphModule, example: torch.Tensor | None) -> list[str]:
    """Fold shape arithmetic and drop eval-mode identities (see the module docstring); returns
    notes. ``example``: one input with its batch axis (``None``: nothing is done)."""
    if example is None:
        return []
    one, two = example[:1], torch.cat([example[:1]] * 2)
    runs = [_record(gm, one), _record(gm, two)]
    if runs[0] is None or runs[1] is None:
        return []
    notes: list[str] = []
    shape_nodes: set[torch.fx.Node] = set()
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method", "call_module") or node not in runs[0]:
            continue
        value = _constant(runs[0][node])
        if node.op != "call_module" and value is not ... and _shape_like(node, shape_nodes):
            shape_nodes.add(node)
            if _constant(runs[1][node]) == value:  # not the batch size: a constant of the network
                _substitute(node, value)
                gm.graph.erase_node(node)
                folded += 1
            continue
        source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if source is None or not any(key in _name(node, gm).lower() for key in _IDENTITY_NAMES):
            continue
        if all(isinstance(run[node], torch.Tensor) and (run[node] is run[source] or torch.equal(run[node], run[source]))
               for run in runs):
            what = f"{node.target!r} ({_name(node, gm)})" if node.op == "call_module" else f"{node.name} ({_name(node, gm)})"
            notes.append(f"{what}{location(node)} is the identity in eval mode: dropped")
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
    if folded:
        notes.append(f"{folded} shape computations (sizes other than the batch size, their arithmetic and asserts) "
                     "settled at trace time")
    return notes
