"""SEAL's CKKS through ``tenseal.sealapi`` with explicit levels and exact scales.

TenSEAL's ``CKKSVector`` rescales after every multiplication, even by a constant, and so spends
a level on each. Here nothing is automatic: a ciphertext's *level* is the number of data primes
it still has (``coeff_modulus_size``), every product is rescaled exactly once, and constants
are encoded at the scale that makes the next rescale land on an exact target scale. Additions
then always meet equal scales; no scale is ever rounded or overwritten.

Rescaling a ciphertext at level ``n`` divides its scale by ``prime(n)``, the last of its primes.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence, Union

import numpy as np
import tenseal.sealapi as sa

from .params import CkksParams, ParameterError
from .rotations import KeySet

Values = Union[float, np.ndarray]


class Engine:
    """SEAL context, encoder and evaluator for one :class:`CkksParams`; counts operations in
    ``counts`` (``ct_ct_mul``, ``pt_mul``, ``rotate``, ``rescale``, ``add``).

    ``tenseal.sealapi`` holds the GIL through SEAL's calls (two threads of SEAL operations take
    as long as one), so an engine is used from one thread; :mod:`he_backend.protocol.workers` shares a
    request between processes instead."""

    def __init__(self, params: CkksParams) -> None:
        self.params = params
        parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(sa.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_bits)))
        self.parameters = parms
        self.context = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ParameterError(f"SEAL rejects {params}: {self.context.parameters_error_message()}")
        self.encoder = sa.CKKSEncoder(self.context)
        self.evaluator = sa.Evaluator(self.context)
        self.slots = self.encoder.slot_count()
        self._parms_ids: dict[int, object] = {}
        data = self.context.first_context_data()
        while data is not None:
            self._parms_ids[len(data.parms().coeff_modulus())] = data.parms_id()
            data = data.next_context_data()
        self.top_level = max(self._parms_ids)
        self.primes = [m.value() for m in parms.coeff_modulus()][: self.top_level]
        self.relin_keys: sa.RelinKeys | None = None
        self.galois_keys: sa.GaloisKeys | None = None
        self.keys = KeySet((), self.slots)  # the steps galois_keys holds
        self.counts: Counter = Counter()

    def load_keys(self, relin: sa.RelinKeys, galois: sa.GaloisKeys | None, rotations: Sequence[int] = ()) -> None:
        """Install evaluation keys made for this context; ``galois`` holds the keys of the
        rotation steps ``rotations``."""
        self.relin_keys = relin
        self.galois_keys = galois
        self.keys = KeySet(tuple(rotations) if galois is not None else (), self.slots)

    def _count(self, name: str) -> None:
        self.counts[name] += 1

    # ---- bookkeeping ---------------------------------------------------------------------
    @staticmethod
    def level(ct: sa.Ciphertext) -> int:
        return ct.coeff_modulus_size()

    def prime(self, level: int) -> float:
        """The prime a rescale removes from a ciphertext at ``level``."""
        return float(self.primes[level - 1])

    def parms_id(self, level: int) -> object:
        if level not in self._parms_ids:
            raise ValueError(f"no level {level}: this context has levels 1..{self.top_level}")
        return self._parms_ids[level]

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, values: Values, scale: float, level: int) -> sa.Plaintext:
        """Encode a constant or a slot vector (zero-padded) at ``level`` and ``scale``."""
        pt = sa.Plaintext()
        if np.ndim(values) == 0:
            self.encoder.encode(float(values), self.parms_id(level), scale, pt)
        else:
            vector = np.zeros(self.slots)
            vector[: len(values)] = values
            self.encoder.encode(vector.tolist(), self.parms_id(level), scale, pt)
        return pt

    def decode(self, pt: sa.Plaintext) -> np.ndarray:
        return np.asarray(self.encoder.decode_double(pt))

    # ---- arithmetic (no automatic rescaling) ---------------------------------------------
    def mod_switch(self, ct: sa.Ciphertext, level: int) -> sa.Ciphertext:
        """``ct`` brought down to ``level`` (no scale change); ``ct`` itself if already there.
        Engine operations never modify their inputs, so sharing is safe."""
        if self.level(ct) < level:
            raise ValueError(f"cannot raise a ciphertext from level {self.level(ct)} to {level}")
        if self.level(ct) == level:
            return ct
        out = sa.Ciphertext()
        self.evaluator.mod_switch_to(ct, self.parms_id(level), out)
        return out

    def mul_plain(self, ct: sa.Ciphertext, values: Values, scale: float) -> sa.Ciphertext:
        """``ct * values`` with the constant encoded at ``scale`` (the product's scale is
        ``ct.scale * scale``); never a zero constant (SEAL refuses transparent results)."""
        return self.mul_plaintext(ct, self.encode(values, scale, self.level(ct)))

    def mul_plaintext(self, ct: sa.Ciphertext, pt: sa.Plaintext) -> sa.Ciphertext:
        out = sa.Ciphertext()
        self.evaluator.multiply_plain(ct, pt, out)
        self._count("pt_mul")
        return out

    def mul(self, a: sa.Ciphertext, b: sa.Ciphertext) -> sa.Ciphertext:
        """Relinearised product at the lower of the two levels (scale ``a.scale * b.scale``)."""
        same = a is b
        level = min(self.level(a), self.level(b))
        a = self.mod_switch(a, level)
        out = sa.Ciphertext()
        if same:
            self.evaluator.square(a, out)
        else:
            self.evaluator.multiply(a, self.mod_switch(b, level), out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        self._count("ct_ct_mul")
        return out

    def rescale(self, ct: sa.Ciphertext) -> sa.Ciphertext:
        self.evaluator.rescale_to_next_inplace(ct)
        self._count("rescale")
        return ct

    def add(self, a: sa.Ciphertext, b: sa.Ciphertext) -> sa.Ciphertext:
        """``a + b`` at the lower level; their scales must already agree."""
        return self._linear(self.evaluator.add, a, b)

    def sub(self, a: sa.Ciphertext, b: sa.Ciphertext) -> sa.Ciphertext:
        """``a - b`` at the lower level; their scales must already agree."""
        return self._linear(self.evaluator.sub, a, b)

    def _linear(self, operation, a: sa.Ciphertext, b: sa.Ciphertext) -> sa.Ciphertext:
        level = min(self.level(a), self.level(b))
        a, b = self.mod_switch(a, level), self.mod_switch(b, level)
        self._check_scales(a, b)
        out = sa.Ciphertext()
        operation(a, b, out)
        self._count("add")
        return out

    def add_plain(self, ct: sa.Ciphertext, values: Values) -> sa.Ciphertext:
        """``ct + values`` with the constant encoded at ``ct``'s level and scale."""
        out = sa.Ciphertext()
        self.evaluator.add_plain(ct, self.encode(values, ct.scale, self.level(ct)), out)
        return out

    def rotate(self, ct: sa.Ciphertext, steps: int) -> sa.Ciphertext:
        """Slots move left by ``steps``: ``out[j] = ct[j + steps]`` (cyclically), composed of
        the fewest rotations by key steps (``counts["rotate"]`` counts key switches)."""
        for step in self.keys.path(steps):
            out = sa.Ciphertext()
            self.evaluator.rotate_vector(ct, step, self.galois_keys, out)
            self._count("rotate")
            ct = out
        return ct

    def rescale_to(self, ct: sa.Ciphertext, level: int, scale: float) -> sa.Ciphertext:
        """``ct`` (at a level above ``level``) moved to exactly (``level``, ``scale``): multiply
        by 1 encoded so that one rescale lands on ``scale``, then drop primes."""
        pre = level + 1
        ct = self.mod_switch(ct, pre)
        out = self.mul_plain(ct, 1.0, scale * self.prime(pre) / ct.scale)
        return self.rescale(out)

    @staticmethod
    def _check_scales(a: sa.Ciphertext, b: sa.Ciphertext) -> None:
        if not np.isclose(a.scale, b.scale, rtol=1e-9, atol=0.0):
            raise AssertionError(f"scale mismatch {a.scale!r} != {b.scale!r} (a scheduling bug)")

    def sum_terms(self, terms: Sequence[sa.Ciphertext]) -> sa.Ciphertext:
        """Sum ciphertexts of equal scale (levels aligned down)."""
        total = terms[0]
        for term in terms[1:]:
            total = self.add(total, term)
        return total
