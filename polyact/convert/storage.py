"""Save and load PANNs and trained models.

A PANN file holds the state dict, a JSON spec of every polynomial, the conversion's structural
options and, when known, the factory that builds the original architecture. Files load with
``torch.load(weights_only=True)``: plain tensors, numbers and strings, no pickled code.

A file's ``factory`` is a *name* of code. Loading imports only polyact's own factories
(:data:`OWN_FACTORIES`) or a factory the caller names (``factory=`` / ``--factory``, or
``allow_factories=``); a file naming anything else is refused with :class:`UntrustedFactory`
before anything is imported, so a crafted file cannot run code. TorchScript archives (which hold
code) are recognised from their zip layout and refused unread.

Every field is checked before it is used: a malformed file raises :class:`CorruptFile` (a
``ValueError``) naming the file, the field and what to do, never a raw exception. Sizes declared by
a file are checked against the bytes it holds: a factory's keyword arguments may not build a model
of more than twice the file's weights (plus :data:`SLACK_ELEMENTS`), nor list more entries than the
file has tensors, and a file lists at most :data:`MAX_LAYERS` activation layers.
"""
from __future__ import annotations

import json
import zipfile
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


MAX_LAYERS = 10_000  # activation layers a PANN file may list
SLACK_ELEMENTS = 1 << 20  # numbers a factory may allocate beyond twice the weights the file holds


class UntrustedFactory(ValueError):
    """A file names a factory (code to import and call) that the caller did not allow."""


class CorruptFile(ValueError):
    """A polyact file with a missing or malformed field."""

    def __init__(self, path: Path | str, field: str, problem: str, fix: str = "save the model again with polyact") -> None:
        super().__init__(f"{path}: field {field!r} {problem}; {fix}")


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive, told from its zip layout (a ``constants.pkl`` or
    ``code/`` entry) without loading anything: TorchScript holds code that runs when loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _check_crc(path: Path) -> None:
    """Refuse a damaged zip archive (torch's reader does not check the CRC-32 of its entries: a
    flipped bit in the weights would load as a silently different model)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ValueError(f"{path} is not a polyact file: a damaged archive ({exc}); save it again") from exc
    if damaged is not None:
        raise CorruptFile(path, damaged, "fails its CRC-32 check (the file is damaged)", "copy or save it again")


def _json(payload: dict[str, Any], key: str, path: Path, kinds: tuple[type, ...], what: str,
          default: str | None = None) -> Any:
    """Field ``key`` of ``payload``: a JSON string decoding to one of ``kinds``."""
    text = payload.get(key, default)
    if not isinstance(text, str):
        raise CorruptFile(path, key, f"must be a JSON string holding {what}, found {type(text).__name__}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptFile(path, key, f"is not readable JSON ({type(exc).__name__})") from exc
    if not isinstance(value, kinds):
        raise CorruptFile(path, key, f"must hold {what}, found {type(value).__name__}")
    return value


def _state_dict(payload: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CorruptFile(path, "state_dict", "must map parameter names to tensors")
    return state


def _lists_within(value: Any, limit: int) -> bool:
    """Whether every list in ``value`` (JSON) has at most ``limit`` entries."""
    if isinstance(value, list):
        return len(value) <= limit and all(_lists_within(v, limit) for v in value)
    if isinstance(value, dict):
        return all(_lists_within(v, limit) for v in value.values())
    return True


def _probe(make: Any, kwargs: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> None:
    """Build the architecture on the meta device (no memory) and refuse one much larger than
    the weights the file holds, before it is built for real."""
    held = sum(t.numel() for t in state.values())
    if not _lists_within(kwargs, max(len(state), 16)):
        raise CorruptFile(path, "factory_kwargs", f"lists more entries than the file holds tensors ({len(state)})")
    try:
        with torch.device("meta"):
            probe = make(**kwargs)
        size = sum(t.numel() for t in probe.state_dict().values())
    except Exception:  # noqa: BLE001 - the real build below reports what is wrong
        return
    if size > 2 * held + SLACK_ELEMENTS:
        raise CorruptFile(path, "factory_kwargs", f"build a model of {size} numbers from a file holding {held}")


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
    recorded = payload.get("factory")
    if recorded is not None and not isinstance(recorded, str):
        raise CorruptFile(path, "factory", f"must be 'package.module:function' or empty, found {type(recorded).__name__}")
    name = _trusted_factory(recorded, factory, allow, path)
    kwargs = _json(payload, "factory_kwargs", path, (dict,), "a JSON object of keyword arguments")
    make = resolve_factory(name)
    _probe(make, kwargs, _state_dict(payload, path), path)
    try:
        model = make(**kwargs)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError, ZeroDivisionError) as exc:
        raise CorruptFile(path, "factory_kwargs", f"do not build a model with {name} ({type(exc).__name__}: {exc})",
                          "pass the arguments the factory takes, or save the model again") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    setattr(model, FACTORY_ATTR, (name, kwargs))
    return model


def _load(path: str | Path, expected: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if is_torchscript(path):
        raise ValueError(f"{path} is TorchScript, which holds code and is not read; its compiled code cannot be "
                         "rewritten into a PANN: save the model's state dict and give --factory package.module:function")
    _check_crc(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own message advises weights_only=False: unsafe, so not repeated
        raise ValueError(f"{path} is not a polyact file (torch.load(weights_only=True) cannot read it as plain "
                         f"tensors: {type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a {expected} file (found {found!r})")
    _state_dict(payload, Path(path))
    return payload


def _load_state(model: nn.Module, payload: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise CorruptFile(path, "state_dict", f"does not fit the architecture ({str(exc)[:300]})",
                          "load it with the architecture it was saved from") from exc


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
    _load_state(model, payload, Path(path))
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
    path = Path(path)
    layers = _json(payload, "layers", path, (dict,), "a JSON object of activation layers")
    if len(layers) > MAX_LAYERS or not all(isinstance(v, dict) for v in layers.values()):
        raise CorruptFile(path, "layers", f"must map at most {MAX_LAYERS} layer names to polynomial specs")
    options = _json(payload, "structure", path, (dict,), "a JSON object of conversion options")
    input_shape = _json(payload, "input_shape", path, (list, type(None)), "a list of sizes or null")
    if input_shape is not None and not (len(input_shape) <= 8 and all(type(n) is int and 0 < n < 1 << 24 for n in input_shape)):
        raise CorruptFile(path, "input_shape", f"must list at most 8 positive sizes, found {str(input_shape)[:80]}")
    input_range = _json(payload, "input_range", path, (list, type(None)), "[low, high] or null", default="null")
    if input_range is not None and not (len(input_range) == 2 and all(type(v) in (int, float) for v in input_range)):
        raise CorruptFile(path, "input_range", f"must be [low, high] or null, found {str(input_range)[:80]}")
    built = _build(payload, model, path, factory, allow_factories)
    try:
        structure = prepare_structure(built, **options)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CorruptFile(path, "structure", f"holds options the conversion does not take ({type(exc).__name__}: {exc})") from exc
    names = {s.name for s in structure.sites}
    if names != set(layers):
        raise ValueError(
            f"{path} does not match this architecture: file has activation layers {sorted(layers)}, "
            f"the model has {sorted(names)}"
        )
    def layer(site: Any) -> PolyAct:
        try:
            return PolyAct.from_spec(layers[site.name], name=site.name)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise CorruptFile(path, "layers", f"holds a malformed polynomial for layer {site.name!r} "
                                              f"({type(exc).__name__}: {exc})") from exc

    install(structure, layer)
    pann = structure.model
    _load_state(pann, payload, path)
    name = factory or payload.get("factory")
    if name:
        setattr(pann, FACTORY_ATTR, (name, _json(payload, "factory_kwargs", path, (dict,), "a JSON object", "{}")))
    setattr(pann, STRUCTURE_ATTR, options)
    setattr(pann, INPUT_SHAPE_ATTR, input_shape)
    setattr(pann, INPUT_RANGE_ATTR, input_range)
    return pann.eval()
