"""Interactive refresh: split a plan deeper than secure CKKS parameters allow into segments and
bring every live ciphertext back to the top level between them, with the client's help.

Protocol (one *round* per cut, honest-but-curious parties), exact in the integer domain: no value
passes through the float64 slot encoder. At a cut the server

1. brings each live ciphertext ``[[m]]`` down to the mask level ``L`` (fewer bytes). Its
   plaintext is an integer polynomial ``m = Delta v + e`` (``Delta`` the scale, ``v`` the slot
   values, ``e`` the CKKS noise) with coefficients ``|m_j| <= C = 2 Delta B`` when the slots
   hold ``|Re v| <= B`` (``B`` from the plan's calibrated ranges; the factor 2 covers the
   imaginary parts and the noise, both far below ``Delta B``),
2. adds a fresh mask polynomial ``r`` whose ``N`` coefficients are independent integers, uniform
   in ``[-W/2, W/2)`` with ``W = 2^w``, ``w = sigma + 1 + ceil(log2 C)``, from the operating
   system's CSPRNG, and sends ``[[m + r]]`` (a *refresh request*);

the client decrypts to the integer coefficients ``u = m + r`` (CRT with Python integers,
:mod:`he_backend.eval.rns`), keeps the real part of the slots (``P(u)_0 = u_0``,
``P(u)_j = floor((u_j - u_{N-j}) / 2)``), encrypts exactly those integers at the top level with
the same scale and sends them back (a *refresh reply*); the server subtracts ``P(r)`` exactly.
The result is ``P(m)`` up to one unit per coefficient plus the fresh encryption's noise.

No wrap-around. The mask level is the lowest with ``log2 Q_L >= w + 1``: then
``|m_j + r_j| < W/2 + C < Q_L / 2``, the client's centred decryption is ``m + r`` over the
integers and the server's subtraction is exact (no multiple of ``Q_L`` is ever lost). A uniform
mask modulo ``Q_L`` would hide perfectly but wrap with probability ``~ C / Q_L`` per
coefficient, a wrong result that the client would see and that depends on ``m``: the same
leakage as the bounded mask at the same level, so the bounded mask, exact every time, is used.

Leakage. For two plaintexts with ``|m_j|, |m'_j| <= C`` the statistical distance between
``m_j + r_j`` and ``m'_j + r_j`` is ``|m_j - m'_j| / W <= 2C / W <= 2^-sigma`` per coefficient;
by the union bound over the ``N`` coefficients of every masked ciphertext of every round, what
the client sees in one inference is within ``sum 2C/W <= n 2^-sigma`` of a distribution that
depends on neither the values nor the server's CKKS noise (which sits inside ``m``). The mask is
drawn per coefficient: a mask shared by coefficients would show the client their differences,
unmasked. Values outside ``[-B, B]`` leak gracefully (``|m_j - m'_j| / W``) and stay exact up to
``2^sigma`` times the bound.

Precision. Nothing is rounded: the refreshed value is the value before the cut plus one fresh
encryption's noise (``~ 3.2 sqrt(2 N ln N)`` in the slots, about ``2^-30`` at scale ``2^40``),
whatever ``sigma`` is (:func:`refresh_precision_bits`). A larger ``sigma`` costs modulus at the
mask level (``w + 1`` bits) and so bytes down, not precision.
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

from ..eval import rns
from ..eval.ckks import Engine
from ..eval.params import CkksParams
from .serialization import PayloadError, unpack

REQUEST_KIND = "refresh request"
REPLY_KIND = "refresh reply"
DEFAULT_SIGMA = 64  # bits per masked coefficient: ResNet-20 (2^19.8 coefficients) stays below 2^-44 in total
TARGET_BITS = 40  # the statistical security a whole inference should keep
FRESH_NOISE_STD = 3.2  # SEAL's error distribution


@dataclass(frozen=True)
class MaskPolicy:
    """Mask width: every coefficient ``r_j`` uniform in ``[-W/2, W/2)``, ``W = 2^w``,
    ``w = sigma + 1 + ceil(log2 C)``, ``C = 2 scale B`` bounding the plaintext's coefficients
    when ``|v| <= B = margin * nominal`` per slot (nominal: ``|t| <= 1`` for polynomial inputs,
    ``max |p(t)|`` over ``[-1, 1]`` for outputs). ``sigma``: statistical security bits per
    masked coefficient."""

    sigma: int = DEFAULT_SIGMA
    margin: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.sigma <= 128:
            raise ValueError(f"sigma must be between 1 and 128 bits, got {self.sigma}; "
                             f"{DEFAULT_SIGMA} keeps a ResNet-20 inference below 2^-{TARGET_BITS}")
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


def coefficient_bound(scale: float, bound: float) -> float:
    """``C = 2 scale B``: a bound on the plaintext coefficients of slots ``|Re v| <= B``
    (``|m_j| <= max_k |m(zeta_k)| = scale max |v|``; the 2 covers the imaginary parts and noise)."""
    return 2.0 * scale * max(bound, 1e-300)


def mask_bits(scale: float, bound: float, sigma: int) -> int:
    """``w``: the mask is uniform in ``[-2^(w-1), 2^(w-1))``, ``w = sigma + 1 + ceil(log2 C)``."""
    return sigma + 1 + max(math.ceil(math.log2(coefficient_bound(scale, bound))), 0)


def coefficient_leakage(scale: float, bound: float, sigma: int) -> float:
    """Statistical distance per masked coefficient, ``2C / 2^w <= 2^-sigma``."""
    return 2.0 * coefficient_bound(scale, bound) / 2.0 ** mask_bits(scale, bound, sigma)


def mask_level(params: CkksParams, bound: float, sigma: int) -> int | None:
    """Lowest level whose modulus holds every masked coefficient without wrapping around,
    ``log2 Q_L >= w + 1``; ``None`` if even the top level cannot."""
    need = mask_bits(params.scale, bound, sigma) + 1
    for level in range(1, params.depth + 2):
        if modulus_bits(params, level) >= need:
            return level
    return None


def refresh_precision_bits(params: CkksParams, bound: float) -> float:
    """Bits relative to ``B`` a refreshed value keeps: it gains one fresh encryption's noise,
    at most ``3.2 sqrt(2 N ln N)`` in the slots (and one unit per coefficient of rounding),
    divided by the scale; ``sigma`` does not enter."""
    n = params.poly_modulus_degree
    noise = 2.0 * FRESH_NOISE_STD * math.sqrt(2.0 * n * math.log(n))
    return params.scale_bits + math.log2(bound) - math.log2(noise)


def leakage_bound(sigma: int) -> str:
    """The leakage bound in one sentence."""
    return (f"at each refresh the client sees the integer coefficients of every plaintext m (|m_j| <= C) as m + r "
            f"with r_j uniform in [-W/2, W/2), W >= 2^{sigma + 1} C, within statistical distance 2^-{sigma} per "
            "coefficient of a distribution independent of the values and of the server's CKKS noise")


def secure_integers(count: int, bits: int) -> np.ndarray:
    """``count`` integers uniform in ``[-2^(bits-1), 2^(bits-1))`` from the OS's CSPRNG (object array)."""
    size = (bits + 7) // 8
    raw = os.urandom(size * count)
    excess, half = 8 * size - bits, 1 << (bits - 1)
    return np.array([(int.from_bytes(raw[i : i + size], "little") >> excess) - half
                     for i in range(0, size * count, size)], dtype=object)


def secure_uniform(count: int) -> np.ndarray:
    """``count`` floats uniform in ``[-1, 1)`` from the operating system's CSPRNG (53 bits)."""
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
    return words.astype(np.float64) * 2.0**-52 - 1.0


def secure_gaussian(count: int) -> np.ndarray:
    """``count`` standard normal floats (Box-Muller on CSPRNG uniforms)."""
    u1 = (secure_uniform(count) + 1.0) / 2.0
    u2 = (secure_uniform(count) + 1.0) / 2.0
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def mask(engine: Engine, ct: sa.Ciphertext, bound: float, sigma: int, level: int) -> tuple[sa.Ciphertext, np.ndarray]:
    """``ct`` at ``level`` plus a fresh mask polynomial, every coefficient its own uniform
    integer of :func:`mask_bits` bits; returns the masked ciphertext and ``P(r)``, the real part
    of the mask (what the server subtracts once the client re-encrypted ``P(m + r)``)."""
    ct = engine.mod_switch(ct, level)
    r = secure_integers(engine.params.poly_modulus_degree, mask_bits(ct.scale, bound, sigma))
    return rns.add_integers(engine, ct, r), rns.real_part(r)


def unmask(engine: Engine, ct: sa.Ciphertext, real: np.ndarray) -> sa.Ciphertext:
    """Remove the mask's real part ``P(r)`` from a refreshed ciphertext, exactly."""
    return rns.add_integers(engine, ct, real, -1)


def flood(engine: Engine, ct: sa.Ciphertext, std: float) -> sa.Ciphertext:
    """Noise flooding: add complex Gaussian noise of standard deviation ``std`` per slot (real
    and imaginary part), hiding the computation's CKKS noise from the decrypting client up to a
    statistical distance of about ``noise / std``, at the cost of ``log2(1 / std)``-bit outputs."""
    noise = std * (secure_gaussian(engine.slots) + 1j * secure_gaussian(engine.slots))
    pt = sa.Plaintext()
    engine.encoder.encode(noise.tolist(), engine.parms_id(engine.level(ct)), ct.scale, pt)
    out = sa.Ciphertext()
    engine.evaluator.add_plain(ct, pt, out)
    return out


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
