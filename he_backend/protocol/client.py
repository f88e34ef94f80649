"""The client: holds the secret key, packs and encrypts inputs, decrypts results."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as sa

from ..eval import rns
from .keys import KeyHolder, write_private
from .plan_layout import PlanLayout
from .refresh import REPLY_KIND, REQUEST_KIND
from .serialization import PayloadError, pack, seal_from_bytes, unpack

CIPHERTEXTS = "ciphertexts"
RESULTS = "results"
KEY_FIELD = "key"  # header field: fingerprint of the public context the ciphertexts belong to
INPUT_MARGIN = 0.1  # inputs may pass the calibrated range by this fraction of its width (convert's margin)


class InputRangeWarning(UserWarning):
    """Inputs outside the range the PANN was calibrated on."""


def as_layout(plan: Any) -> PlanLayout:
    """The :class:`PlanLayout` of a plan, or the layout itself."""
    return plan if isinstance(plan, PlanLayout) else plan.layout()


def layout_header(plan: Any) -> dict[str, Any]:
    """What client and server must agree on, sent with every batch of ciphertexts (``plan``: a
    :class:`~he_backend.protocol.plan.Plan` or its layout)."""
    gather = as_layout(plan).input_gather
    input_layout = hashlib.sha256(np.asarray(gather, dtype="<i8").tobytes()).hexdigest()[:16] if gather else "flat"
    return {"block": plan.block, "input_length": plan.input_length, "output_length": plan.output_length,
            "poly_modulus_degree": plan.params.poly_modulus_degree, "coeff_bits": list(plan.params.coeff_bits),
            "input_layout": input_layout}


class Client:
    """Keys and packing for one plan (a :class:`~he_backend.protocol.plan.Plan` or just its
    :class:`PlanLayout`). The
    secret key never leaves this object; :meth:`public_context` is what the server gets."""

    def __init__(self, plan: Any, keys: KeyHolder | None = None, *,
                 input_range: tuple[float, float] | None = None, strict: bool = False) -> None:
        self.plan = as_layout(plan)
        self.keys = keys if keys is not None else KeyHolder(plan.params, plan.rotations)
        if self.keys.params != plan.params:
            raise ValueError("these keys were made for other parameters than the plan's")
        self.input_range = input_range
        self.strict = strict

    def _check_range(self, flat: np.ndarray) -> None:
        """Warn (``strict``: raise) when inputs leave the calibrated range widened by
        :data:`INPUT_MARGIN` of its width: the PANN's polynomials are only accurate inside it."""
        if self.input_range is None:
            return
        low, high = self.input_range
        pad = INPUT_MARGIN * (high - low)
        seen = float(flat.min()), float(flat.max())
        if seen[0] >= low - pad and seen[1] <= high + pad:
            return
        message = (f"inputs range over [{seen[0]:.4g}, {seen[1]:.4g}], outside the calibrated input range "
                   f"[{low:.4g}, {high:.4g}] (±{INPUT_MARGIN:.0%}): the encrypted result would be unreliable; "
                   "scale the inputs like the training data")
        if self.strict:
            raise ValueError(message + " (strict mode refuses them)")
        warnings.warn(message, InputRangeWarning, stacklevel=3)

    def public_context(self) -> bytes:
        """Parameters and evaluation keys for the server (no secret key)."""
        return self.keys.public_context()

    def _as_batch(self, x: Any) -> np.ndarray:
        array = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
        shape = self.plan.input_shape
        if array.shape == shape:
            array = array[None]
        if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
            raise ValueError(
                f"expected inputs of shape (n, {', '.join(map(str, shape))}) or ({', '.join(map(str, shape))}), "
                f"got {tuple(array.shape)}"
            )
        if array.shape[0] == 0:
            raise ValueError("no inputs to encrypt")
        if not np.all(np.isfinite(array)):
            raise ValueError("inputs contain NaN or infinite values")
        return array.reshape(array.shape[0], -1)

    def encrypt(self, x: Any) -> bytes:
        """Encrypt samples (an array or tensor of ``(n, *input_shape)`` or one sample): one per
        ciphertext with sample packing, ``plan.samples_per_ciphertext`` per ciphertext with batch
        packing."""
        flat = self._as_batch(x)
        self._check_range(flat)
        per = self.plan.samples_per_ciphertext
        block = self.plan.block
        count = self.plan.input_ciphertexts  # more than one: each sample spans several ciphertexts
        blobs = []
        for start in range(0, len(flat), per):
            group = flat[start : start + per]
            if self.plan.input_period:  # one sample in one ciphertext, repeated over its slots
                blobs.append(self.keys.encrypt_bytes(self.plan.sample_slots(group[0])))
                continue
            slots = np.zeros(len(group) * count * block)
            for b, sample in enumerate(group):
                packed = self.plan.pack_input(sample)
                slots[b * block : b * block + packed.size] = packed
            width = len(slots) // count  # several samples in one ciphertext, or one sample in several
            blobs.extend(self.keys.encrypt_bytes(slots[i * width : (i + 1) * width]) for i in range(count))
        return pack(CIPHERTEXTS, {**layout_header(self.plan), "samples": len(flat), "per_ciphertext": per,
                                  KEY_FIELD: self.keys.fingerprint}, blobs)

    def decrypt(self, data: bytes) -> np.ndarray:
        """Results of :meth:`he_backend.protocol.server.Server.run` as an ``(n, output_length)`` array."""
        header, blobs = unpack(data, RESULTS)
        if header.get("block") != self.plan.block or header.get("output_length") != self.plan.output_length:
            raise PayloadError("these results were computed for another plan than this client's")
        if header.get(KEY_FIELD) != self.keys.fingerprint:
            raise PayloadError(f"these results were computed with keys {header.get(KEY_FIELD)!r}, not this client's "
                               f"({self.keys.fingerprint}); decrypt them with the client that encrypted the inputs")
        context = self.keys.engine.context
        rows = []
        per, total, group = header["per_ciphertext"], header["samples"], self.plan.output_ciphertexts
        for i in range(0, len(blobs), group):
            parts = [self.keys.decrypt(seal_from_bytes(sa.Ciphertext, blob, context, "result ciphertext"))
                     for blob in blobs[i : i + group]]
            slots = parts[0] if group == 1 else np.concatenate([p[: self.plan.block] for p in parts])
            for b in range(min(per, total - (i // group) * per)):
                rows.append(slots[b * self.plan.block : b * self.plan.block + self.plan.output_length])
        return np.array(rows)

    def refresh(self, data: bytes) -> bytes:
        """Answer a server's refresh request: decrypt each masked ciphertext to the integer
        coefficients of its plaintext, keep the real part of its slots and encrypt exactly those
        integers at the top level and the same scale (seeded). The integers seen here are masked:
        the plaintext plus the server's uniform integer mask (see :mod:`he_backend.protocol.refresh`)."""
        header, blobs = unpack(data, REQUEST_KIND)
        expected = layout_header(self.plan)
        if any(header.get(k) != v for k, v in expected.items()):
            raise PayloadError("this refresh request was made for another plan than this client's")
        if header.get(KEY_FIELD) != self.keys.fingerprint:
            raise PayloadError(f"this refresh request comes from a session of the keys {header.get(KEY_FIELD)!r}, "
                               f"not this client's ({self.keys.fingerprint})")
        if header.get("count") != len(blobs) or not isinstance(header.get("round"), str):
            raise PayloadError(f"corrupted refresh request: it announces {header.get('count')} ciphertexts "
                               f"and holds {len(blobs)}")
        engine = self.keys.engine
        fresh = []
        for blob in blobs:
            masked = self.keys.decrypt_plaintext(seal_from_bytes(sa.Ciphertext, blob, engine.context, "masked ciphertext"))
            real = rns.real_part(rns.coefficients(engine, masked))
            fresh.append(self.keys.encrypt_plaintext_bytes(rns.plaintext(engine, real, engine.top_level, masked.scale)))
        return pack(REPLY_KIND, {**expected, KEY_FIELD: self.keys.fingerprint, "round": header["round"],
                                 "refresh": header.get("refresh"), "count": len(fresh)}, fresh)

    def save(self, path: str | Path) -> None:
        """Write the secret key (file mode 0600) so that this client can decrypt later."""
        write_private(path, self.keys.private_bytes())

    @classmethod
    def load(cls, plan: Any, path: str | Path, **options: Any) -> "Client":
        """The client saved by :meth:`save` (``options``: ``input_range``, ``strict``)."""
        try:
            keys = KeyHolder.from_private_bytes(Path(path).read_bytes())
        except PayloadError as exc:  # name the file
            raise PayloadError(f"{path}: {exc}") from exc
        return cls(plan, keys, **options)
