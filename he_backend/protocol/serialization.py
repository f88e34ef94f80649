"""Bytes in and out: SEAL objects, and polyact's container for keys, ciphertexts and plans.

A container is ``MAGIC`` (8 bytes), a little-endian u32 header length, a JSON header naming its
``kind`` and the length of every binary section, then the sections. Parsing checks each step and
says what is wrong: not a polyact payload, the wrong kind, truncated, or a section SEAL rejects.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any, Callable

import tenseal.sealapi as sa

MAGIC = b"POLYACT\x01"
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class PayloadError(ValueError):
    """Bytes that are not a valid polyact payload of the expected kind."""


def seal_to_bytes(obj: Any) -> bytes:
    """Serialise a SEAL object (ciphertext, key, parameters) with SEAL's own format."""
    fd, path = tempfile.mkstemp(dir=_TMP)
    os.close(fd)
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def seal_from_bytes(factory: Callable[[], Any], data: bytes, context: Any | None, what: str) -> Any:
    """Load a SEAL object of ``factory()``'s type from ``data`` (validated against ``context``)."""
    fd, path = tempfile.mkstemp(dir=_TMP)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        obj = factory()
        try:
            obj.load(path) if context is None else obj.load(context, path)
        except (RuntimeError, ValueError) as exc:
            raise PayloadError(
                f"{what} is malformed or was made for other encryption parameters ({exc}); "
                "send bytes produced by the matching client"
            ) from exc
        return obj
    finally:
        os.unlink(path)


def pack(kind: str, header: dict[str, Any], sections: list[bytes]) -> bytes:
    """One container of ``kind`` with a JSON ``header`` and binary ``sections``."""
    meta = json.dumps({"kind": kind, "sections": [len(s) for s in sections], **header}).encode()
    return MAGIC + struct.pack("<I", len(meta)) + meta + b"".join(sections)


def unpack(data: bytes, kind: str) -> tuple[dict[str, Any], list[bytes]]:
    """Header and sections of a container, checking magic, kind and lengths."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"expected bytes for a {kind}, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise PayloadError(f"not a polyact {kind}: the bytes do not start with the polyact header")
    if len(data) < len(MAGIC) + 4:
        raise PayloadError(f"truncated {kind}: {len(data)} bytes")
    (size,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if start + size > len(data):
        raise PayloadError(f"truncated {kind}: the header alone announces {size} bytes, {len(data) - start} follow")
    try:
        header = json.loads(data[start : start + size])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"corrupted {kind}: unreadable header ({type(exc).__name__}); "
                           "send bytes produced by polyact") from exc
    if not isinstance(header, dict) or header.get("kind") != kind:
        found = header.get("kind") if isinstance(header, dict) else None
        raise PayloadError(f"expected a polyact {kind}, got a {found!r}")
    lengths = header.get("sections", [])
    if not isinstance(lengths, list) or not all(type(n) is int and n >= 0 for n in lengths):
        raise PayloadError(f"corrupted {kind}: the header's 'sections' must be a list of byte counts, got {lengths!r}")
    offset = start + size
    if offset + sum(lengths) != len(data):
        raise PayloadError(
            f"truncated or padded {kind}: the header announces {offset + sum(lengths)} bytes, got {len(data)}"
        )
    sections = []
    for length in lengths:
        sections.append(data[offset : offset + length])
        offset += length
    return header, sections


def load_parameters(data: bytes) -> sa.EncryptionParameters:
    return seal_from_bytes(lambda: sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS), data, None, "encryption parameters")
