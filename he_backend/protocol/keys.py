"""Keys: the client's secret key and the public evaluation context made from it.

The secret key stays inside :class:`KeyHolder`. What leaves it is a *public context*: the
encryption parameters, the relinearisation keys and the Galois keys of the rotations a plan
needs (SEAL's seeded serialisation halves their size). No public encryption key is needed:
the client encrypts with its secret key (symmetric CKKS: lower fresh noise, and seeded
ciphertexts half the size), and the server never encrypts.

A holder can be saved with its secret key for the client's own later use (``private_bytes``);
such bytes are refused by :class:`he_backend.protocol.server.Server`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from ..eval.ckks import Engine
from ..eval.params import CkksParams
from .serialization import PayloadError, load_parameters, pack, seal_from_bytes, seal_to_bytes, unpack

PUBLIC_KIND = "public context"
PRIVATE_KIND = "private key file"


class SecretKeyRefused(PayloadError):
    """A server was handed key material that contains a secret key."""


def key_fingerprint(public_context: bytes) -> str:
    """SHA-256 (hex) of a serialised public context: the name of a key pair. Every ciphertext
    batch carries the fingerprint of the keys it was encrypted for, so a server holding other
    keys refuses it instead of computing garbage."""
    return hashlib.sha256(bytes(public_context)).hexdigest()


def write_private(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable and writable by its owner only (mode 0600), also
    when the file already existed with a wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
    finally:
        os.close(fd)


def _params_of(parameters: sa.EncryptionParameters, scale_bits: int) -> CkksParams:
    bits = tuple(m.bit_count() for m in parameters.coeff_modulus())
    return CkksParams(parameters.poly_modulus_degree(), bits, scale_bits)


class KeyHolder:
    """Generates and keeps a secret key; encrypts and decrypts slot vectors."""

    def __init__(self, params: CkksParams, rotations: Sequence[int] = (), *, _secret: sa.SecretKey | None = None,
                 _public: bytes | None = None) -> None:
        self.params = params
        self.rotations = sorted(set(int(r) for r in rotations))
        self.engine = Engine(params)
        generator = sa.KeyGenerator(self.engine.context) if _secret is None else sa.KeyGenerator(self.engine.context, _secret)
        self._secret = generator.secret_key()
        self._encryptor = sa.Encryptor(self.engine.context, self._secret)
        self._decryptor = sa.Decryptor(self.engine.context, self._secret)
        if _public is None:  # fresh evaluation keys; a restored holder keeps its own (same fingerprint)
            sections = [seal_to_bytes(self.engine.parameters), seal_to_bytes(generator.create_relin_keys())]
            if self.rotations:
                tool = self.engine.context.key_context_data().galois_tool()
                elements = [tool.get_elt_from_step(step) for step in self.rotations]  # never a list the
                sections.append(seal_to_bytes(generator.create_galois_keys(elements)))  # binding reads as elements
            _public = pack(PUBLIC_KIND, {"scale_bits": params.scale_bits, "rotations": self.rotations}, sections)
        self._public = bytes(_public)
        self.fingerprint = key_fingerprint(self._public)
        public = load_public_context(self._public)
        if public.params != params:
            raise PayloadError(f"the stored public context is for {public.params}, the secret key for {params}")
        install_keys(self.engine, public)

    def public_context(self) -> bytes:
        """Parameters, relinearisation keys and Galois keys; never the secret key. Always the
        same bytes for one holder (their SHA-256 is :attr:`fingerprint`)."""
        return self._public

    def private_bytes(self) -> bytes:
        """Everything to restore this holder later (secret key and public context): keep it
        private (:func:`write_private`)."""
        header = {"params": self.params.to_dict(), "rotations": self.rotations}
        return pack(PRIVATE_KIND, header, [seal_to_bytes(self._secret), self._public])

    @classmethod
    def from_private_bytes(cls, data: bytes) -> "KeyHolder":
        header, sections = unpack(data, PRIVATE_KIND)
        try:
            params = CkksParams.from_dict(header["params"])
            rotations = [int(r) for r in header["rotations"]]
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise PayloadError(f"corrupted private key file: field {exc!s} is missing or malformed; "
                               "make keys again (polyact keygen)") from exc
        if len(sections) not in (1, 2):
            raise PayloadError(f"corrupted private key file: {len(sections)} sections, expected the secret key "
                               "and the public context")
        secret = seal_from_bytes(sa.SecretKey, sections[0], Engine(params).context, "secret key")
        return cls(params, rotations, _secret=secret, _public=sections[1] if len(sections) > 1 else None)

    def encrypt(self, values: np.ndarray, level: int | None = None) -> sa.Ciphertext:
        """Encrypt a slot vector (zero-padded) at ``level`` (default: the top) and the scale."""
        pt = self.engine.encode(np.asarray(values, dtype=np.float64), self.params.scale, level or self.engine.top_level)
        ct = sa.Ciphertext()
        self._encryptor.encrypt_symmetric(pt, ct)
        return ct

    def encrypt_bytes(self, values: np.ndarray, level: int | None = None) -> bytes:
        """Like :meth:`encrypt`, serialised with SEAL's seed compression (half the size)."""
        pt = self.engine.encode(np.asarray(values, dtype=np.float64), self.params.scale, level or self.engine.top_level)
        return seal_to_bytes(self._encryptor.encrypt_symmetric(pt))

    def decrypt(self, ct: sa.Ciphertext) -> np.ndarray:
        return self.engine.decode(self.decrypt_plaintext(ct))

    def decrypt_plaintext(self, ct: sa.Ciphertext) -> sa.Plaintext:
        """The plaintext polynomial of ``ct`` (NTT form, ``ct``'s level and scale), not decoded."""
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return pt

    def encrypt_plaintext_bytes(self, pt: sa.Plaintext) -> bytes:
        """A plaintext polynomial encrypted as it is (its level and scale), seed-compressed."""
        return seal_to_bytes(self._encryptor.encrypt_symmetric(pt))


@dataclass(frozen=True)
class PublicContext:
    """A parsed public context: parameters, serialised evaluation keys, rotation steps."""

    params: CkksParams
    relin_keys: bytes
    galois_keys: bytes | None
    rotations: list[int]


def load_public_context(data: bytes) -> PublicContext:
    """Parse a public context.

    Refuses key material with a secret key: polyact's private key files and TenSEAL contexts
    serialised with ``save_secret_key=True``.
    """
    if isinstance(data, (bytes, bytearray)) and not bytes(data).startswith(b"POLYACT"):
        _refuse_tenseal_secret(bytes(data))
    try:
        header, sections = unpack(data, PUBLIC_KIND)
    except PayloadError as exc:
        if "private key file" in str(exc):
            raise SecretKeyRefused(
                "this key file contains the client's secret key; a server must only receive the public "
                "context (KeyHolder.public_context() / Client.public_context())"
            ) from exc
        raise
    if len(sections) not in (2, 3):
        raise PayloadError(f"a public context has 2 or 3 sections, got {len(sections)}")
    scale_bits, rotations = header.get("scale_bits"), header.get("rotations", [])
    if type(scale_bits) is not int or not 1 <= scale_bits <= 120:
        raise PayloadError(f"the public context's header field 'scale_bits' must be an integer of 1 to 120 bits, "
                           f"got {_shown(scale_bits)}; send Client.public_context()")
    if not isinstance(rotations, list) or not all(type(r) is int and abs(r) < 1 << 20 for r in rotations):
        raise PayloadError(f"the public context's header field 'rotations' must be a list of integer rotation steps, "
                           f"got {_shown(rotations)}; send Client.public_context()")
    try:
        params = _params_of(load_parameters(sections[0]), scale_bits)
    except ValueError as exc:
        raise PayloadError(f"the public context's encryption parameters are unusable ({exc})") from exc
    return PublicContext(params, sections[1], sections[2] if len(sections) == 3 else None, rotations)


def _shown(value: object) -> str:
    """A short description of a header value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def install_keys(engine: Engine, public: PublicContext) -> None:
    """Load ``public``'s evaluation keys into ``engine`` (validated against its context)."""
    galois = public.galois_keys
    engine.load_keys(seal_from_bytes(sa.RelinKeys, public.relin_keys, engine.context, "relinearisation keys"),
                     None if galois is None else seal_from_bytes(sa.GaloisKeys, galois, engine.context, "Galois keys"),
                     public.rotations)


def _refuse_tenseal_secret(data: bytes) -> None:
    """Recognise a TenSEAL context; refuse it if it holds a secret key."""
    try:
        context = ts.context_from(data)
    except Exception:
        return  # not a TenSEAL context either: the caller reports the bad header
    if context.is_private():
        raise SecretKeyRefused(
            "this TenSEAL context contains a secret key; serialise it with save_secret_key=False "
            "(context.serialize(save_secret_key=False)) or send polyact's Client.public_context()"
        )
    raise PayloadError(
        "TenSEAL contexts are not accepted: a plan needs Galois keys for its own rotation steps; "
        "create keys with plan.client() and send client.public_context()"
    )
