"""Interactive refresh: split a plan deeper than secure CKKS parameters allow into segments and
bring every live ciphertext back to the top level between them, with the client's help.

Protocol (one *round* per cut, honest-but-curious parties). At a cut the server

1. brings each live ciphertext ``[[v]]`` (``|v| <= B`` per slot, ``B`` from the plan's calibrated
   ranges) down to the lowest level that still holds the masked value (fewer bytes),
2. adds a fresh mask ``r`` drawn per slot from the operating system's CSPRNG, uniform in
   ``[-2^sigma B, 2^sigma B]`` on the real *and* the imaginary part of every slot, and sends
   ``[[v + r]]`` (a *refresh request*);

the client decrypts, keeps the real parts, re-encrypts them at the top level and sends them back
(a *refresh reply*); the server subtracts ``Re r`` and continues with the next segment.

Leakage. For any two values ``|v|, |v'| <= B`` the statistical distance between ``v + r`` and
``v' + r`` is ``|v - v'| / (2^(sigma+1) B) <= 2^-sigma`` per real coordinate, so what the client
decrypts at a refresh is within ``2^-sigma`` per coordinate (``n 2^-sigma`` for ``n``
coordinates, union bound: ``N 2^-sigma`` for a whole ciphertext of ``N/2`` complex slots, and
over an inference every ciphertext of every round adds ``N``) of a distribution that does not
depend on ``v`` -- nor on the CKKS noise of the server's computation, which sits inside ``v``.
That needs a mask per slot: the copies of a periodic value carry different noise, and a shared
mask would show their differences. Values outside ``[-B, B]`` (inputs far outside the
calibration range) leak more, gracefully: the distance is ``|v - v'| / (2^(sigma+1) B)``.

Precision. The masked value is ``2^sigma`` times larger than ``B``. Its CKKS noise is absolute,
so it does not grow, but SEAL decodes and encodes through float64 (53-bit mantissa), so the
client's decode and re-encode round at about ``2^(sigma - 49.5) B``: the refreshed value keeps
about ``49.5 - sigma`` bits relative to ``B`` (:func:`refresh_precision_bits`; measured at
N = 8192 and 16384 for sigma 30 to 44 within half a bit), or the CKKS precision at the scale if
that is lower (sigma = 20 costs nothing at a 40-bit scale, sigma = 30 leaves about 20 bits,
sigma = 40 about 10). The masked value must also fit the modulus at the level it is sent at,
``log2 Q_L >= scale_bits + sigma + log2 B + 4`` (:func:`mask_level`); the compiler only cuts
where the live values are at or above that level (:mod:`he_backend.lowering.segments`).
"""
from __future__ import annotations

import math
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import tenseal.sealapi as sa

from ..eval.ckks import Engine
from ..eval.params import CkksParams
from .serialization import PayloadError, unpack

REQUEST_KIND = "refresh request"
REPLY_KIND = "refresh reply"
DEFAULT_SIGMA = 30
FLOAT_BITS = 49.5  # bits a float64 decode and re-encode keep of a value (measured)


@dataclass(frozen=True)
class MaskPolicy:
    """Mask width: ``r`` uniform in ``[-2^sigma B, 2^sigma B]`` where ``B = margin * nominal``
    bounds a value (nominal: ``|t| <= 1`` for polynomial inputs, ``max |p(t)|`` over
    ``[-1, 1]`` for outputs). ``sigma`` is the statistical security parameter in bits."""

    sigma: int = DEFAULT_SIGMA
    margin: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.sigma <= 48:
            raise ValueError(f"sigma must be between 1 and 48 bits, got {self.sigma}; "
                             "the masked value must still fit float64 and the modulus")
        if not self.margin >= 1.0:
            raise ValueError(f"margin must be >= 1, got {self.margin}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MaskPolicy":
        return cls(int(data["sigma"]), float(data["margin"]))


def refresh_bytes(n: int, live: int, mask_level: int, top: int) -> tuple[int, int]:
    """Bytes down (masked ciphertexts at ``mask_level``) and up (seeded fresh ones at ``top``)."""
    return live * 2 * n * mask_level * 8, live * n * top * 8


@dataclass(frozen=True)
class Cut:
    """A refresh before step ``position``: the live values ``names`` (distinct ciphertexts),
    their bounds ``|v| <= bounds[i]`` and the level the masked ciphertexts are sent at."""

    position: int
    names: tuple[str, ...]
    bounds: tuple[float, ...]
    mask_level: int

    def to_dict(self) -> dict:
        return {"position": self.position, "names": list(self.names), "bounds": list(self.bounds),
                "mask_level": self.mask_level}

    @classmethod
    def from_dict(cls, data: dict) -> "Cut":
        return cls(int(data["position"]), tuple(data["names"]), tuple(float(b) for b in data["bounds"]),
                   int(data["mask_level"]))


def modulus_bits(params: CkksParams, level: int) -> float:
    """A lower bound on ``log2 Q_level`` (each ``b``-bit prime exceeds ``2^(b-1)``)."""
    return float(sum(b - 1 for b in params.coeff_bits[:level]))


def mask_level(params: CkksParams, bound: float, sigma: int) -> int | None:
    """Lowest level whose modulus holds a value of ``|v| <= bound`` masked with ``sigma`` bits:
    ``log2 Q_L >= scale_bits + sigma + log2 bound + 4`` (complex mask, sign, noise); ``None``
    if even the top level cannot."""
    need = params.scale_bits + sigma + math.log2(max(bound, 1e-300)) + 4
    for level in range(1, params.depth + 2):
        if modulus_bits(params, level) >= need:
            return level
    return None


def refresh_precision_bits(sigma: int) -> float:
    """Bits (relative to the bound ``B``) a masked value keeps through the client's float64
    decode and re-encode: ``49.5 - sigma`` (measured); the refreshed value carries the smaller of
    this and the CKKS precision at the scale."""
    return FLOAT_BITS - sigma


def leakage_bound(sigma: int) -> str:
    """The leakage bound in one sentence."""
    return (f"at each refresh the client sees every value v (|v| <= B) as v + r with r uniform in "
            f"[-2^{sigma} B, 2^{sigma} B], within statistical distance 2^-{sigma} per real coordinate "
            f"of a distribution independent of v and of the server's CKKS noise")


def secure_uniform(count: int) -> np.ndarray:
    """``count`` floats uniform in ``[-1, 1)`` from the operating system's CSPRNG (53 bits)."""
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
    return words.astype(np.float64) * 2.0**-52 - 1.0


def secure_gaussian(count: int) -> np.ndarray:
    """``count`` standard normal floats (Box-Muller on CSPRNG uniforms)."""
    u1 = (secure_uniform(count) + 1.0) / 2.0
    u2 = (secure_uniform(count) + 1.0) / 2.0
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def encode_complex(engine: Engine, values: np.ndarray, scale: float, level: int) -> sa.Plaintext:
    """A complex slot vector encoded at ``level`` and ``scale``."""
    pt = sa.Plaintext()
    engine.encoder.encode(np.asarray(values, dtype=np.complex128).tolist(), engine.parms_id(level), scale, pt)
    return pt


def add_complex(engine: Engine, ct: sa.Ciphertext, values: np.ndarray) -> sa.Ciphertext:
    """``ct + values`` (complex slots) at ``ct``'s level and scale."""
    out = sa.Ciphertext()
    engine.evaluator.add_plain(ct, encode_complex(engine, values, ct.scale, engine.level(ct)), out)
    return out


def mask(engine: Engine, ct: sa.Ciphertext, bound: float, sigma: int, level: int) -> tuple[sa.Ciphertext, np.ndarray]:
    """``ct`` at ``level`` plus a fresh uniform mask of width ``2^sigma bound`` on the real and
    imaginary part of every slot; returns the masked ciphertext and the real part of the mask
    (what the server subtracts after the client re-encrypted the real parts). Every slot gets
    its own mask, copies of a periodic value (:mod:`he_backend.eval.cyclic`) included: they
    carry different CKKS noise, and one mask shared by the copies would show the client the
    differences of that noise, unmasked."""
    width = 2.0**sigma * bound
    noise = width * secure_uniform(engine.slots) + 1j * width * secure_uniform(engine.slots)
    return add_complex(engine, engine.mod_switch(ct, level), noise), noise.real


def unmask(engine: Engine, ct: sa.Ciphertext, real: np.ndarray) -> sa.Ciphertext:
    """Remove the mask from a refreshed ciphertext (at the top level and the parameters' scale)."""
    out = sa.Ciphertext()
    engine.evaluator.sub_plain(ct, engine.encode(real, ct.scale, engine.level(ct)), out)
    return out


def flood(engine: Engine, ct: sa.Ciphertext, std: float) -> sa.Ciphertext:
    """Noise flooding: add complex Gaussian noise of standard deviation ``std`` per slot (real
    and imaginary part), hiding the computation's CKKS noise from the decrypting client up to a
    statistical distance of about ``noise / std``, at the cost of ``log2(1 / std)``-bit outputs."""
    return add_complex(engine, ct, std * (secure_gaussian(engine.slots) + 1j * secure_gaussian(engine.slots)))


# ---- the rounds -----------------------------------------------------------------------------
def message_kind(data: bytes) -> str:
    """The kind of a polyact container (``"results"`` or ``"refresh request"`` from a server)."""
    from .serialization import MAGIC

    if not isinstance(data, (bytes, bytearray)) or not bytes(data).startswith(MAGIC):
        raise PayloadError("not a polyact message: the bytes do not start with the polyact header")
    for kind in (REQUEST_KIND, "results"):
        try:
            unpack(data, kind)
            return kind
        except PayloadError as exc:
            if "expected a polyact" not in str(exc):
                raise
    raise PayloadError("expected results or a refresh request from the server")


@dataclass
class Rounds:
    """What one interactive inference cost: per round ``bytes_down`` (server to client),
    ``bytes_up`` and ``seconds`` (the client's refresh work)."""

    log: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.log)

    def totals(self) -> dict:
        return {"rounds": self.count, "bytes_down": sum(r["bytes_down"] for r in self.log),
                "bytes_up": sum(r["bytes_up"] for r in self.log)}


def drive(start: Callable[[bytes], bytes], resume: Callable[[bytes], bytes], refresh: Callable[[bytes], bytes],
          payload: bytes, rounds: Rounds | None = None) -> bytes:
    """Run an inference to its results: ``start(payload)``, then while the server asks for a
    refresh, ``resume(refresh(request))``. The same loop drives an in-process server and the
    HTTP service; ``rounds`` (if given) records bytes and seconds per round."""
    reply = start(payload)
    while message_kind(reply) == REQUEST_KIND:
        began = time.perf_counter()
        answer = refresh(reply)
        if rounds is not None:
            rounds.log.append({"bytes_down": len(reply), "bytes_up": len(answer),
                               "client_seconds": time.perf_counter() - began})
        reply = resume(answer)
    return reply


def run_interactive(client, server, payload: bytes, rounds: Rounds | None = None) -> bytes:
    """Result bytes of an in-process ``server`` for ``client``'s ``payload``, refresh rounds
    included (plans without refresh points: exactly ``server.run(payload)``)."""
    return drive(server.start, server.resume, client.refresh, payload, rounds)


def new_token() -> str:
    return secrets.token_urlsafe(16)


def check_count(found: int, expected: int, what: str) -> None:
    if found != expected:
        raise PayloadError(f"{what} holds {found} ciphertexts, the round expects {expected}")
