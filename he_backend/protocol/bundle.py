"""Deployment artifacts, like Concrete-ML's ``FHEModelDev`` / ``FHEModelServer`` / ``FHEModelClient``.

``polyact compile PANN --out DIR`` (or :func:`save_bundles`) writes two versioned files:

- ``DIR/server.bundle``: the compiled plan with its weights, what ``polyact serve`` and
  ``polyact encrypt-run`` run (:class:`ServerBundle`);
- ``DIR/client.bundle``: the plan's layout (parameters, rotations, packing; no weights) and the
  calibrated input range, what a client needs to make keys and encrypt (:class:`ClientBundle`).

Both are polyact containers (:mod:`he_backend.protocol.serialization`): JSON headers and numeric arrays,
nothing that executes when read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..eval.runner import PlaintextCache
from .client import Client
from .keys import KeyHolder
from .plan import Plan
from .plan_layout import PlanLayout
from .serialization import MAGIC, PayloadError, pack, unpack
from .server import Server

BUNDLE_VERSION = 1
SERVER_KIND = "server bundle"
CLIENT_KIND = "client bundle"
SERVER_FILE = "server.bundle"
CLIENT_FILE = "client.bundle"

InputRange = tuple[float, float]


def _header(input_range: InputRange | None) -> dict[str, Any]:
    return {"version": BUNDLE_VERSION, "input_range": list(map(float, input_range)) if input_range else None}


def _read(data: bytes, kind: str) -> tuple[InputRange | None, bytes]:
    header, sections = unpack(data, kind)
    version = header.get("version")
    if not isinstance(version, int) or not 1 <= version <= BUNDLE_VERSION:
        raise PayloadError(f"this {kind} has version {version!r}; this polyact reads versions 1..{BUNDLE_VERSION} "
                           "(upgrade polyact, or compile the PANN again with this one)")
    if len(sections) != 1:
        raise PayloadError(f"a {kind} has one section, got {len(sections)}")
    bounds = header.get("input_range")
    if bounds is not None and not (isinstance(bounds, list) and len(bounds) == 2
                                   and all(isinstance(v, (int, float)) for v in bounds) and bounds[0] <= bounds[1]):
        raise PayloadError(f"corrupted {kind}: input_range must be [low, high], got {bounds!r}")
    return (tuple(bounds) if bounds is not None else None), sections[0]


@dataclass(frozen=True)
class ClientBundle:
    """What a client needs: the plan's layout and the calibrated input range (no weights)."""

    layout: PlanLayout
    input_range: InputRange | None = None

    def to_bytes(self) -> bytes:
        return pack(CLIENT_KIND, _header(self.input_range), [self.layout.to_bytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClientBundle":
        input_range, layout = _read(data, CLIENT_KIND)
        return cls(PlanLayout.from_bytes(layout), input_range)

    def client(self, keys: KeyHolder | None = None, *, strict: bool = False) -> Client:
        """A :class:`Client` with fresh (or the given) keys that checks inputs against the
        calibrated range: a warning, or a ``ValueError`` when ``strict``."""
        return Client(self.layout, keys, input_range=self.input_range, strict=strict)


@dataclass(frozen=True)
class ServerBundle:
    """What a server runs: the compiled plan (weights included) and the calibrated input range."""

    plan: Plan
    input_range: InputRange | None = None

    def to_bytes(self) -> bytes:
        return pack(SERVER_KIND, _header(self.input_range), [self.plan.to_bytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> "ServerBundle":
        input_range, plan = _read(data, SERVER_KIND)
        return cls(Plan.from_bytes(plan), input_range)

    def client_bundle(self) -> ClientBundle:
        return ClientBundle(self.plan.layout(), self.input_range)

    def server(self, public_context: bytes, cache: PlaintextCache | None = None) -> Server:
        """A :class:`Server` for one client's public context."""
        return Server(self.plan, public_context, cache)


def save_bundles(plan: Plan, directory: str | Path, input_range: InputRange | None = None) -> tuple[Path, Path]:
    """Write ``server.bundle`` and ``client.bundle`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; compile --out takes a folder for server.bundle and client.bundle")
    directory.mkdir(parents=True, exist_ok=True)
    bundle = ServerBundle(plan, input_range)
    (directory / SERVER_FILE).write_bytes(bundle.to_bytes())
    (directory / CLIENT_FILE).write_bytes(bundle.client_bundle().to_bytes())
    return directory / SERVER_FILE, directory / CLIENT_FILE


def _bundle_file(path: str | Path, name: str) -> Path:
    path = Path(path)
    path = path / name if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write bundles with `polyact compile PANN --out FOLDER`")
    return path


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder or a polyact container (rather than a PANN file)."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def _read_file(path: Path, parse: Callable[[bytes], Any]) -> Any:
    """``parse`` of the file's bytes; a malformed file's :class:`PayloadError` names the file."""
    try:
        return parse(path.read_bytes())
    except PayloadError as exc:
        raise PayloadError(f"{path}: {exc}; compile the PANN again (polyact compile PANN --out FOLDER)") from exc


def load_server_bundle(path: str | Path) -> ServerBundle:
    """The server bundle in ``path`` (a file, or a folder holding ``server.bundle``)."""
    return _read_file(_bundle_file(path, SERVER_FILE), ServerBundle.from_bytes)


def load_client_bundle(path: str | Path) -> ClientBundle:
    """The client bundle in ``path`` (a file, or a folder holding ``client.bundle``)."""
    return _read_file(_bundle_file(path, CLIENT_FILE), ClientBundle.from_bytes)
