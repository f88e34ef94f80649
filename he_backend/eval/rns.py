"""Exact integer coefficients of SEAL's CKKS plaintexts, through ``tenseal.sealapi``'s public API.

A CKKS plaintext at level ``L`` is a polynomial ``m(X) = sum_j m_j X^j`` of ``R = Z[X]/(X^N + 1)``
held modulo ``Q_L = q_1 ... q_L`` in RNS form (``m mod q_i`` for every prime), and in NTT form
(each residue polynomial evaluated at the ``2N``-th roots of unity mod ``q_i``). The bindings read
a plaintext only element by element (``Plaintext.__getitem__``, ``DynArray.at``), can neither
write one nor turn it out of NTT form (``Evaluator.transform_from_ntt`` takes ciphertexts only).
This module goes round both with SEAL's own, documented serialisation: it writes uncompressed
SEAL objects (header ``0xA15E``, ``compr_mode`` none) and lets SEAL load and validate them, and
it runs SEAL's NTT on a ciphertext ``(c_0, 0)`` whose first polynomial is the plaintext.

Integers are Python ``int`` (numpy ``object`` arrays): coefficients below ``Q_L`` exceed 64 bits.
CRT: ``m = sum_i [m_i (Q/q_i)^-1]_{q_i} (Q/q_i) mod Q``, then centred into ``(-Q/2, Q/2]``.
"""
from __future__ import annotations

import os
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import tenseal.sealapi as sa

from .ckks import Engine

_MAGIC = 0xA15E
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compr_mode, reserved, size


@lru_cache(maxsize=1)
def _version() -> tuple[int, int]:
    """SEAL's serialisation version (from an object SEAL wrote itself)."""
    with tempfile.NamedTemporaryFile(dir=_TMP) as fh:
        sa.Plaintext().save(fh.name)
        magic, _, major, minor, *_ = _HEADER.unpack(Path(fh.name).read_bytes()[: _HEADER.size])
    if magic != _MAGIC:
        raise RuntimeError(f"unexpected SEAL serialisation header {magic:#x}")
    return major, minor


def _sealed(body: bytes) -> bytes:
    """``body`` behind an uncompressed SEAL header."""
    major, minor = _version()
    return _HEADER.pack(_MAGIC, _HEADER.size, major, minor, 0, 0, _HEADER.size + len(body)) + body


def _dyn_array(values: np.ndarray) -> bytes:
    data = np.ascontiguousarray(values, dtype="<u8").tobytes()
    return _sealed(struct.pack("<Q", len(data) // 8) + data)


def _parms_id(engine: Engine, level: int) -> bytes:
    return struct.pack("<4Q", *engine.parms_id(level))


def _load(factory, engine: Engine, data: bytes):
    """A SEAL object loaded (and validated against the context) from ``data``."""
    fd, path = tempfile.mkstemp(dir=_TMP)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        obj = factory()
        obj.load(engine.context, path)
        return obj
    finally:
        os.unlink(path)


def primes(engine: Engine, level: int) -> list[int]:
    """The primes ``q_1 .. q_level`` of a level."""
    return [int(q) for q in engine.primes[:level]]


def _residue_ciphertext(engine: Engine, residues: np.ndarray, scale: float, ntt: bool, c1: int = 0) -> sa.Ciphertext:
    """The ciphertext ``(c_0, c1)`` with ``c_0`` = ``residues`` (``level x N``, already reduced)
    and ``c_1`` the constant ``c1`` in every coefficient (SEAL's NTT refuses a transparent
    ciphertext, ``c_1 = 0``, so the transforms run with ``c1 = 1`` and read ``c_0`` only)."""
    level, n = residues.shape
    head = _parms_id(engine, level) + struct.pack("<?QQQdQ", ntt, 2, n, level, scale, 1)
    body = np.concatenate([residues.astype(np.uint64).ravel(), np.full(level * n, c1, dtype=np.uint64)])
    return _load(sa.Ciphertext, engine, _sealed(head + _dyn_array(body)))


def _ntt(engine: Engine, rows: np.ndarray, scale: float, forward: bool) -> np.ndarray:
    """SEAL's negacyclic NTT (``forward``) or its inverse of every row (residues mod ``q_1 ..``)."""
    ct = _residue_ciphertext(engine, rows, scale, ntt=not forward, c1=1)
    (engine.evaluator.transform_to_ntt_inplace if forward else engine.evaluator.transform_from_ntt_inplace)(ct)
    return _read(ct.dyn_array(), rows.size).reshape(rows.shape)


def _read(obj, count: int) -> np.ndarray:
    return np.fromiter(map(obj.__getitem__ if isinstance(obj, sa.Plaintext) else obj.at, range(count)),
                       dtype=np.uint64, count=count)


def residues(values: np.ndarray, moduli: list[int]) -> np.ndarray:
    """``values mod q`` for every ``q`` (a ``len(moduli) x N`` uint64 array)."""
    values = np.asarray(values, dtype=object)
    return np.array([(values % q).astype(np.uint64) for q in moduli], dtype=np.uint64)


def crt(rows: np.ndarray, moduli: list[int]) -> np.ndarray:
    """The integers in ``(-Q/2, Q/2]`` with the residues ``rows`` (one row per prime)."""
    total = 1
    for q in moduli:
        total *= q
    out = np.zeros(rows.shape[1], dtype=object)
    for row, q in zip(rows, moduli):
        rest = total // q
        out = out + (row.astype(object) * pow(rest, -1, q) % q) * rest
    out %= total
    return np.where(out > total // 2, out - total, out)


def add_integers(engine: Engine, ct: sa.Ciphertext, coeffs: np.ndarray, sign: int = 1) -> sa.Ciphertext:
    """``ct`` with ``sign * m`` added to its plaintext, exactly, for the integer polynomial ``m``
    (``coeffs``). SEAL transforms ``(m, 1)`` to NTT form (``(m, 0)`` is transparent, which it
    refuses) and ``(0, 1)`` is taken back off: ``ct + (m, 1) - (0, 1)``; nothing is read back."""
    level = engine.level(ct)
    shifted = _residue_ciphertext(engine, residues(coeffs, primes(engine, level)), ct.scale, ntt=False, c1=1)
    zero = _residue_ciphertext(engine, np.zeros((level, shifted.poly_modulus_degree()), dtype=np.uint64), ct.scale,
                               ntt=False, c1=1)
    out = sa.Ciphertext()
    for part in (shifted, zero):
        engine.evaluator.transform_to_ntt_inplace(part)
    (engine.evaluator.add if sign > 0 else engine.evaluator.sub)(ct, shifted, out)
    (engine.evaluator.sub_inplace if sign > 0 else engine.evaluator.add_inplace)(out, zero)
    return out


def plaintext(engine: Engine, coeffs: np.ndarray, level: int, scale: float) -> sa.Plaintext:
    """The CKKS plaintext (NTT form) of the integer polynomial ``coeffs`` at ``level`` and ``scale``."""
    n = engine.params.poly_modulus_degree
    data = _ntt(engine, residues(coeffs, primes(engine, level)), scale, True)
    body = _parms_id(engine, level) + struct.pack("<Qd", level * n, scale) + _dyn_array(data)
    return _load(sa.Plaintext, engine, _sealed(body))


def coefficients(engine: Engine, pt: sa.Plaintext) -> np.ndarray:
    """The integer coefficients of a decrypted plaintext (NTT form), centred modulo ``Q_level``."""
    n = engine.params.poly_modulus_degree
    level = pt.coeff_count() // n
    rows = _ntt(engine, _read(pt, level * n).reshape(level, n), pt.scale, False)
    return crt(rows, primes(engine, level))


def real_part(coeffs: np.ndarray) -> np.ndarray:
    """The polynomial of the real parts of the slots: ``m`` has real slots iff ``m(X) = m(X^-1)``,
    i.e. ``m_j = -m_{N-j}`` (``X^-j = -X^{N-j}``); this returns ``m_0`` and
    ``floor((m_j - m_{N-j}) / 2)``, exact up to one unit per coefficient."""
    coeffs = np.asarray(coeffs, dtype=object)
    return np.concatenate([coeffs[:1], (coeffs[1:] - coeffs[:0:-1]) // 2])
