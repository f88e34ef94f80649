"""CKKS parameters: ring dimension, coefficient modulus chain and scale, within 128-bit security.

A circuit of multiplicative depth ``D`` needs ``D`` rescaling primes of about ``scale_bits``
bits each, plus a first prime holding the result's integer part and a special prime for key
switching:

    coeff_bits = [first] + [scale_bits] * D + [special],   log Q = sum(coeff_bits).

The HomomorphicEncryption.org standard (classical, 128-bit, ternary secrets) bounds ``log Q``
by ring dimension ``N``; SEAL enforces the same table. ``choose_params`` takes the smallest
``N`` (the fastest) whose bound admits the depth at the requested precision, and the largest
scale up to 40 bits that fits.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

# max log2(Q) for 128-bit security, HomomorphicEncryption.org standard (SEAL's CoeffModulus::MaxBitCount)
MAX_LOG_Q = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
MAX_PRIME_BITS = 60
DEFAULT_SCALE_BITS = 40
INTEGER_BITS = 10  # headroom of the first prime above the scale: |values| < 2^10 after decoding


class ParameterError(ValueError):
    """No secure CKKS parameters can run the requested circuit."""


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters: ring dimension ``poly_modulus_degree`` (``N``; ``N/2`` slots),
    ``coeff_bits`` (first prime, one prime per level, special prime) and ``scale_bits``."""

    poly_modulus_degree: int
    coeff_bits: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q:
            raise ParameterError(f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q)}, got {n}")
        if len(self.coeff_bits) < 2:
            raise ParameterError("coeff_bits needs at least a data prime and the special prime")
        if any(not 17 <= b <= MAX_PRIME_BITS for b in self.coeff_bits):
            raise ParameterError(f"every prime needs 17 to {MAX_PRIME_BITS} bits, got {list(self.coeff_bits)}")
        if self.log_q > MAX_LOG_Q[n]:
            raise ParameterError(
                f"log Q = {self.log_q} exceeds the 128-bit security bound {MAX_LOG_Q[n]} for N = {n}; "
                "use fewer or smaller primes, or a larger N"
            )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplicative levels available: data primes minus the first one."""
        return len(self.coeff_bits) - 2

    @property
    def log_q(self) -> int:
        return sum(self.coeff_bits)

    @property
    def scale(self) -> float:
        return 2.0**self.scale_bits

    def to_dict(self) -> dict:
        return {**asdict(self), "coeff_bits": list(self.coeff_bits)}

    @classmethod
    def from_dict(cls, data: dict) -> "CkksParams":
        return cls(int(data["poly_modulus_degree"]), tuple(int(b) for b in data["coeff_bits"]), int(data["scale_bits"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def params_for(n: int, depth: int, scale_bits: int) -> CkksParams:
    """The chain ``[scale + 10] + [scale] * depth + [special]`` for ring dimension ``n``."""
    first = min(MAX_PRIME_BITS, scale_bits + INTEGER_BITS)
    special = max(first, scale_bits)
    return CkksParams(n, (first,) + (scale_bits,) * depth + (special,), scale_bits)


def max_depth(n: int, scale_bits: int) -> int:
    """Largest depth ring dimension ``n`` admits at ``scale_bits``."""
    first = min(MAX_PRIME_BITS, scale_bits + INTEGER_BITS)
    return (MAX_LOG_Q[n] - first - max(first, scale_bits)) // scale_bits


def choose_params(
    depth: int,
    *,
    min_scale_bits: int = 30,
    max_scale_bits: int = DEFAULT_SCALE_BITS,
    slots: int = 1,
    min_n: int = 8192,
) -> CkksParams:
    """Smallest secure ring dimension (then largest scale) that runs ``depth`` levels.

    ``min_scale_bits`` sets the precision floor (decrypted results carry roughly
    ``scale_bits - 10`` to ``scale_bits - 20`` correct bits); ``slots`` is the number of slots
    the packing needs. Raises :class:`ParameterError` with what would fit otherwise.
    """
    if depth < 0:
        raise ParameterError(f"depth must be >= 0, got {depth}")
    if not 17 <= min_scale_bits <= max_scale_bits <= MAX_PRIME_BITS:
        raise ParameterError(f"need 17 <= min_scale_bits <= max_scale_bits <= {MAX_PRIME_BITS}")
    for n in sorted(MAX_LOG_Q):
        if n < min_n or n // 2 < slots:
            continue
        for scale_bits in range(max_scale_bits, min_scale_bits - 1, -1):
            if max_depth(n, scale_bits) >= depth:
                return params_for(n, depth, scale_bits)
    largest = max(MAX_LOG_Q)
    available = max_depth(largest, min_scale_bits)
    raise ParameterError(
        f"the circuit needs {depth} levels but N = {largest} (the largest ring with 128-bit security; "
        f"TenSEAL has no bootstrapping) allows {available} at a {min_scale_bits}-bit scale; lower the "
        "polynomial degrees (or use composite/lsq fits at lower precision), use fewer activation layers, "
        "or accept a smaller min_scale_bits"
    )
