"""The client: holds the secret key, packs and encrypts inputs, decrypts results."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as sa

from .compile import Plan, PlanLayout
from .keys import KeyHolder
from .serialization import PayloadError, pack, seal_from_bytes, unpack

CIPHERTEXTS = "ciphertexts"
RESULTS = "results"


def layout_header(plan: Plan | PlanLayout) -> dict[str, Any]:
    """What client and server must agree on, sent with every batch of ciphertexts."""
    return {"block": plan.block, "input_length": plan.input_length, "output_length": plan.output_length,
            "poly_modulus_degree": plan.params.poly_modulus_degree, "coeff_bits": list(plan.params.coeff_bits)}


class Client:
    """Keys and packing for one plan (a :class:`Plan` or just its :class:`PlanLayout`). The
    secret key never leaves this object; :meth:`public_context` is what the server gets."""

    def __init__(self, plan: Plan | PlanLayout, keys: KeyHolder | None = None) -> None:
        self.plan = plan.layout() if isinstance(plan, Plan) else plan
        self.keys = keys if keys is not None else KeyHolder(plan.params, plan.rotations)
        if self.keys.params != plan.params:
            raise ValueError("these keys were made for other parameters than the plan's")

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
        per = self.plan.samples_per_ciphertext
        block = self.plan.block
        count = self.plan.input_ciphertexts  # more than one: each sample spans several ciphertexts
        blobs = []
        for start in range(0, len(flat), per):
            group = flat[start : start + per]
            slots = np.zeros(len(group) * count * block)
            for b, sample in enumerate(group):
                slots[b * block : b * block + sample.size] = sample
            width = len(slots) // count  # several samples in one ciphertext, or one sample in several
            blobs.extend(self.keys.encrypt_bytes(slots[i * width : (i + 1) * width]) for i in range(count))
        return pack(CIPHERTEXTS, {**layout_header(self.plan), "samples": len(flat), "per_ciphertext": per}, blobs)

    def decrypt(self, data: bytes) -> np.ndarray:
        """Results of :meth:`he_backend.server.Server.run` as an ``(n, output_length)`` array."""
        header, blobs = unpack(data, RESULTS)
        if header.get("block") != self.plan.block or header.get("output_length") != self.plan.output_length:
            raise PayloadError("these results were computed for another plan than this client's")
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

    def save(self, path: str | Path) -> None:
        """Write the secret key (private!) so that this client can decrypt later."""
        Path(path).write_bytes(self.keys.private_bytes())

    @classmethod
    def load(cls, plan: Plan | PlanLayout, path: str | Path) -> "Client":
        return cls(plan, KeyHolder.from_private_bytes(Path(path).read_bytes()))


class ServiceError(RuntimeError):
    """The service answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RemoteClient:
    """A client of the HTTP service (:mod:`he_backend.service`): fetches the plan's layout
    (parameters and packing, no weights), makes keys,
    uploads the public context once (a session), then :meth:`infer` encrypts, posts and
    decrypts. The secret key stays in this object."""

    def __init__(self, url: str, *, timeout: float = 600.0, client: Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.plan = PlanLayout.from_bytes(self._request("GET", "/layout"))
        self.client = client or Client(self.plan)
        self.session = json.loads(self._request("POST", "/sessions", self.client.public_context()))["session"]

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("detail", detail)
            except (ValueError, AttributeError):
                pass
            raise ServiceError(exc.code, str(detail)) from None

    def infer(self, x: Any) -> np.ndarray:
        """Encrypted inference of ``x`` (``(n, *input_shape)`` or one sample): ``(n, outputs)``."""
        return self.client.decrypt(self.infer_bytes(self.client.encrypt(x)))

    def infer_bytes(self, payload: bytes) -> bytes:
        """Post already encrypted bytes; returns the result bytes."""
        return self._request("POST", f"/sessions/{self.session}/infer", payload)

    def close(self) -> None:
        """Delete the session on the server."""
        self._request("DELETE", f"/sessions/{self.session}")
