"""Keys: the client's secret key and the public evaluation context made from it.

The secret key stays inside :class:`KeyHolder`. What leaves it is a *public context*: the
encryption parameters, the relinearisation keys and the Galois keys of the rotations a plan
needs (SEAL's seeded serialisation halves their size). No public encryption key is needed:
the client encrypts with its secret key (symmetric CKKS: lower fresh noise, and seeded
ciphertexts half the size), and the server never encrypts.

A holder can be saved with its secret key for the client's own later use (``private_bytes``);
such bytes are refused by :class:`he_backend.server.Server`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from .ckks import Engine
from .params import CkksParams
from .serialization import PayloadError, load_parameters, pack, seal_from_bytes, seal_to_bytes, unpack

PUBLIC_KIND = "public context"
PRIVATE_KIND = "private key file"


class SecretKeyRefused(PayloadError):
    """A server was handed key material that contains a secret key."""


def _params_of(parameters: sa.EncryptionParameters, scale_bits: int) -> CkksParams:
    bits = tuple(m.bit_count() for m in parameters.coeff_modulus())
    return CkksParams(parameters.poly_modulus_degree(), bits, scale_bits)


class KeyHolder:
    """Generates and keeps a secret key; encrypts and decrypts slot vectors."""

    def __init__(self, params: CkksParams, rotations: Sequence[int] = (), *, _secret: sa.SecretKey | None = None) -> None:
        self.params = params
        self.rotations = sorted(set(int(r) for r in rotations))
        self.engine = Engine(params)
        generator = sa.KeyGenerator(self.engine.context) if _secret is None else sa.KeyGenerator(self.engine.context, _secret)
        self._secret = generator.secret_key()
        self._relin = generator.create_relin_keys()
        self._galois = generator.create_galois_keys(self.rotations) if self.rotations else None
        self._encryptor = sa.Encryptor(self.engine.context, self._secret)
        self._decryptor = sa.Decryptor(self.engine.context, self._secret)
        public = load_public_context(self.public_context())
        self.engine.load_keys(public.relin_keys, public.galois_keys)

    def public_context(self) -> bytes:
        """Parameters, relinearisation keys and Galois keys; never the secret key."""
        sections = [seal_to_bytes(self.engine.parameters), seal_to_bytes(self._relin)]
        if self._galois is not None:
            sections.append(seal_to_bytes(self._galois))
        return pack(PUBLIC_KIND, {"scale_bits": self.params.scale_bits, "rotations": self.rotations}, sections)

    def private_bytes(self) -> bytes:
        """Everything to restore this holder later, secret key included: keep it private."""
        header = {"params": self.params.to_dict(), "rotations": self.rotations}
        return pack(PRIVATE_KIND, header, [seal_to_bytes(self._secret)])

    @classmethod
    def from_private_bytes(cls, data: bytes) -> "KeyHolder":
        header, sections = unpack(data, PRIVATE_KIND)
        params = CkksParams.from_dict(header["params"])
        secret = seal_from_bytes(sa.SecretKey, sections[0], Engine(params).context, "secret key")
        return cls(params, header["rotations"], _secret=secret)

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
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return self.engine.decode(pt)


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
    params = _params_of(load_parameters(sections[0]), int(header["scale_bits"]))
    return PublicContext(params, sections[1], sections[2] if len(sections) == 3 else None,
                         list(header.get("rotations", [])))


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
