"""Save and load PANNs and trained models.

A PANN file holds the state dict, a JSON spec of every polynomial, the conversion's structural
options and, when known, the factory that builds the original architecture. Files load with
``torch.load(weights_only=True)``: plain tensors, numbers and strings, no pickled code.

A file's ``factory`` is a *name* of code. Loading imports only polyact's own factories
(:data:`OWN_FACTORIES`) or a factory the caller names (``factory=`` / ``--factory``, or
``allow_factories=``); a file naming anything else is refused with :class:`UntrustedFactory`
before anything is imported, so a crafted file cannot run code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..models import FACTORY_ATTR, resolve_factory
from ..nn.poly_act import PolyAct, polyact_layers
from .call_sites import prepare_structure
from .sites import install

PANN_FORMAT = "polyact-pann/1"
MODEL_FORMAT = "polyact-model/1"
STRUCTURE_ATTR = "polyact_structure"
INPUT_SHAPE_ATTR = "polyact_input_shape"
INPUT_RANGE_ATTR = "polyact_input_range"
OWN_FACTORIES = frozenset({"polyact.models:build_model", "polyact.models:MLP", "polyact.models:LeNet",
                           "polyact.models:ResNet"})


class UntrustedFactory(ValueError):
    """A file names a factory (code to import and call) that the caller did not allow."""


def _factory_of(model: nn.Module, factory: str | None, factory_kwargs: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    if factory is not None:
        return factory, dict(factory_kwargs or {})
    recorded = getattr(model, FACTORY_ATTR, None)
    return (recorded[0], dict(recorded[1])) if recorded else (None, {})


def _trusted_factory(recorded: str, factory: str | None, allow: Iterable[str], path: Path) -> str:
    """The factory to import: the caller's ``factory``, or the file's ``recorded`` one when it is
    polyact's own or in ``allow``. Nothing a file alone names is ever imported."""
    if factory is not None:
        return factory
    if recorded in OWN_FACTORIES or recorded in set(allow):
        return recorded
    raise UntrustedFactory(
        f"{path} asks to build its architecture with {recorded!r}, which is not one of polyact's own "
        "factories; loading would import and run that code. If you trust this file, name the factory "
        f"yourself: load_pann(..., factory={recorded!r}) or allow_factories=[{recorded!r}] in Python, "
        f"--factory {recorded} on the command line"
    )


def _build(payload: dict[str, Any], model: nn.Module | None, path: Path, factory: str | None = None,
           allow: Iterable[str] = ()) -> nn.Module:
    if model is not None:
        return model
    if not payload.get("factory") and factory is None:
        raise ValueError(
            f"{path} does not record how to build its architecture; pass model=<an instance of the "
            "original architecture> or factory='package.module:function' (--factory on the command line)"
        )
    name = _trusted_factory(payload.get("factory"), factory, allow, path)
    kwargs = json.loads(payload["factory_kwargs"])
    if not isinstance(kwargs, dict):
        raise ValueError(f"{path} has corrupted factory arguments (expected a JSON object)")
    model = resolve_factory(name)(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    setattr(model, FACTORY_ATTR, (name, kwargs))
    return model


def _load(path: str | Path, expected: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own message advises weights_only=False: unsafe, so not repeated
        raise ValueError(f"{path} is not a polyact file (torch.load(weights_only=True) cannot read it as plain "
                         f"tensors: {type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {expected} file (found {found!r})")
    return payload


def copy_metadata(source: nn.Module, target: nn.Module) -> nn.Module:
    """Carry polyact's notes on a model (factory, structure, input shape) over to ``target``
    (``copy.deepcopy`` of an fx GraphModule does not keep them)."""
    for key in (FACTORY_ATTR, STRUCTURE_ATTR, INPUT_SHAPE_ATTR, INPUT_RANGE_ATTR):
        if hasattr(source, key):
            setattr(target, key, getattr(source, key))
    return target


def file_format(path: str | Path) -> str:
    """``"pann"`` or ``"model"`` for a file saved by polyact (raises otherwise)."""
    for kind, expected in (("pann", PANN_FORMAT), ("model", MODEL_FORMAT)):
        try:
            _load(path, expected)
            return kind
        except ValueError:
            continue
    raise ValueError(f"{path} is neither a polyact model ({MODEL_FORMAT}) nor a PANN ({PANN_FORMAT}) file")


def save_model(model: nn.Module, path: str | Path, *, factory: str | None = None,
               factory_kwargs: dict[str, Any] | None = None) -> None:
    """Save a trained (non-polynomial) model: state dict plus its factory."""
    name, kwargs = _factory_of(model, factory, factory_kwargs)
    torch.save({"format": MODEL_FORMAT, "state_dict": model.state_dict(), "factory": name,
                "factory_kwargs": json.dumps(kwargs)}, path)


def load_model(path: str | Path, model: nn.Module | None = None, *, factory: str | None = None,
               allow_factories: Iterable[str] = ()) -> nn.Module:
    """Load a model saved by :func:`save_model` (rebuilt by its factory unless ``model`` is given;
    ``factory`` / ``allow_factories`` as in :func:`load_pann`)."""
    payload = _load(path, MODEL_FORMAT)
    model = _build(payload, model, Path(path), factory, allow_factories)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def save_pann(pann: nn.Module, path: str | Path, *, factory: str | None = None,
              factory_kwargs: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
              input_range: tuple[float, float] | None = None) -> None:
    """Save a PANN produced by :func:`polyact.convert` (state dict + JSON polynomial spec).

    ``input_range`` is the ``(low, high)`` range of the inputs it was calibrated on; a deployed
    client warns about inputs outside it (see :mod:`he_backend.protocol.bundle`)."""
    layers = {name: m.spec() for name, m in polyact_layers(pann).items()}
    if not layers:
        raise ValueError("this model has no PolyAct layers; convert it with polyact.convert first")
    name, kwargs = _factory_of(pann, factory, factory_kwargs)
    structure = getattr(pann, STRUCTURE_ATTR, {"maxpool": "avg", "use_fx": True})
    input_shape = input_shape or getattr(pann, INPUT_SHAPE_ATTR, None)
    input_range = input_range or getattr(pann, INPUT_RANGE_ATTR, None)
    torch.save({
        "format": PANN_FORMAT,
        "state_dict": pann.state_dict(),
        "layers": json.dumps(layers),
        "structure": json.dumps(structure),
        "factory": name,
        "factory_kwargs": json.dumps(kwargs),
        "input_shape": json.dumps(list(input_shape) if input_shape else None),
        "input_range": json.dumps([float(v) for v in input_range] if input_range else None),
    }, path)


def load_pann(path: str | Path, model: nn.Module | None = None, *, factory: str | None = None,
              allow_factories: Iterable[str] = ()) -> nn.Module:
    """Rebuild a PANN saved by :func:`save_pann`.

    The architecture comes from ``model`` (an instance of the original architecture), else from
    ``factory`` (``"package.module:function"`` or ``"path/to/file.py:function"``, called with the
    file's recorded keyword arguments), else from the factory the file records, which is imported
    only if it is polyact's own or listed in ``allow_factories`` (otherwise
    :class:`UntrustedFactory`). The loaded PANN gives identical outputs to the saved one.
    """
    payload = _load(path, PANN_FORMAT)
    layers = json.loads(payload["layers"])
    options = json.loads(payload["structure"])
    structure = prepare_structure(_build(payload, model, Path(path), factory, allow_factories), **options)
    names = {s.name for s in structure.sites}
    if names != set(layers):
        raise ValueError(
            f"{path} does not match this architecture: file has activation layers {sorted(layers)}, "
            f"the model has {sorted(names)}"
        )
    install(structure, lambda site: PolyAct.from_spec(layers[site.name], name=site.name))
    pann = structure.model
    pann.load_state_dict(payload["state_dict"])
    name = factory or payload["factory"]
    if name:
        setattr(pann, FACTORY_ATTR, (name, json.loads(payload["factory_kwargs"])))
    setattr(pann, STRUCTURE_ATTR, options)
    setattr(pann, INPUT_SHAPE_ATTR, json.loads(payload["input_shape"]))
    setattr(pann, INPUT_RANGE_ATTR, json.loads(payload.get("input_range", "null")))
    return pann.eval()
