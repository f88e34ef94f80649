"""The client: holds the secret key, packs and encrypts inputs, decrypts results."""
from __future__ import annotations

import hashlib
import json
import ssl
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as sa

from .compile import Plan, PlanLayout
from .keys import KeyHolder, write_private
from .refresh import REPLY_KIND, REQUEST_KIND, Rounds, drive
from .serialization import PayloadError, pack, seal_from_bytes, unpack

CIPHERTEXTS = "ciphertexts"
RESULTS = "results"
KEY_FIELD = "key"  # header field: fingerprint of the public context the ciphertexts belong to
INPUT_MARGIN = 0.1  # inputs may pass the calibrated range by this fraction of its width (convert's margin)


class InputRangeWarning(UserWarning):
    """Inputs outside the range the PANN was calibrated on."""


def layout_header(plan: Plan | PlanLayout) -> dict[str, Any]:
    """What client and server must agree on, sent with every batch of ciphertexts."""
    gather = (plan.layout() if isinstance(plan, Plan) else plan).input_gather
    input_layout = hashlib.sha256(np.asarray(gather, dtype="<i8").tobytes()).hexdigest()[:16] if gather else "flat"
    return {"block": plan.block, "input_length": plan.input_length, "output_length": plan.output_length,
            "poly_modulus_degree": plan.params.poly_modulus_degree, "coeff_bits": list(plan.params.coeff_bits),
            "input_layout": input_layout}


class Client:
    """Keys and packing for one plan (a :class:`Plan` or just its :class:`PlanLayout`). The
    secret key never leaves this object; :meth:`public_context` is what the server gets."""

    def __init__(self, plan: Plan | PlanLayout, keys: KeyHolder | None = None, *,
                 input_range: tuple[float, float] | None = None, strict: bool = False) -> None:
        self.plan = plan.layout() if isinstance(plan, Plan) else plan
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
        """Results of :meth:`he_backend.server.Server.run` as an ``(n, output_length)`` array."""
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
        """Answer a server's refresh request: decrypt the masked ciphertexts, keep the real parts
        and re-encrypt them at the top level (seeded). The values seen here are masked: the
        true value plus the server's uniform mask (see :mod:`he_backend.refresh`)."""
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
        context = self.keys.engine.context
        fresh = [self.keys.encrypt_bytes(self.keys.decrypt(seal_from_bytes(sa.Ciphertext, blob, context,
                                                                          "masked ciphertext")))
                 for blob in blobs]
        return pack(REPLY_KIND, {**expected, KEY_FIELD: self.keys.fingerprint, "round": header["round"],
                                 "refresh": header.get("refresh"), "count": len(fresh)}, fresh)

    def save(self, path: str | Path) -> None:
        """Write the secret key (file mode 0600) so that this client can decrypt later."""
        write_private(path, self.keys.private_bytes())

    @classmethod
    def load(cls, plan: Plan | PlanLayout, path: str | Path, **options: Any) -> "Client":
        """The client saved by :meth:`save` (``options``: ``input_range``, ``strict``)."""
        return cls(plan, KeyHolder.from_private_bytes(Path(path).read_bytes()), **options)


class ServiceError(RuntimeError):
    """The service answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RemoteClient:
    """A client of the HTTP service (:mod:`he_backend.service`): fetches the client bundle (the
    plan's layout and calibrated input range, no weights), makes keys, uploads the public context
    once (a session), then :meth:`infer` encrypts, posts and decrypts. The secret key stays in
    this object.

    One kept-alive HTTP connection (httpx); requests that fail in transport are retried
    ``retries`` times with exponential backoff, and a session the server no longer knows
    (expired, or the server restarted) is renewed by uploading the public context again.
    ``token``: the bearer token of a service started with ``--token-file``; ``verify``: ``True``,
    ``False`` or a CA bundle path for ``https://`` URLs."""

    def __init__(self, url: str, *, timeout: float = 600.0, client: Client | None = None, token: str | None = None,
                 verify: bool | str = True, retries: int = 3, strict: bool = False) -> None:
        import httpx

        from .bundle import ClientBundle

        self.url = url.rstrip("/")
        self.retries = retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(verify, str):  # a CA bundle (e.g. a self-signed server certificate)
            verify = ssl.create_default_context(cafile=verify)
        self.http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify, headers=headers)
        bundle = ClientBundle.from_bytes(self._request("GET", "/client-bundle"))
        self.plan = bundle.layout
        self.client = client or bundle.client(strict=strict)
        self.session = self._open_session()
        self.rounds = Rounds()

    def _open_session(self) -> str:
        return json.loads(self._request("POST", "/sessions", self.client.public_context()))["session"]

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, content=body,
                                             headers={"Content-Type": "application/octet-stream"})
                break
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(0.2 * 2**attempt)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            raise ServiceError(response.status_code, str(detail))
        return response.content

    def infer(self, x: Any) -> np.ndarray:
        """Encrypted inference of ``x`` (``(n, *input_shape)`` or one sample): ``(n, outputs)``."""
        return self.client.decrypt(self.infer_bytes(self.client.encrypt(x)))

    def infer_bytes(self, payload: bytes) -> bytes:
        """Post already encrypted bytes; returns the result bytes (after the refresh rounds the
        plan needs; bytes per round are appended to :attr:`rounds`). An expired session is
        renewed once, by uploading the public context again and restarting the inference."""
        try:
            return self._drive(payload)
        except ServiceError as exc:
            if exc.status != 404:
                raise
        self.session = self._open_session()
        return self._drive(payload)

    def _drive(self, payload: bytes) -> bytes:
        self.rounds = Rounds()
        return drive(lambda body: self._request("POST", f"/sessions/{self.session}/infer", body),
                     lambda body: self._request("POST", f"/sessions/{self.session}/round", body),
                     self.client.refresh, payload, self.rounds)

    def close(self) -> None:
        """Delete the session on the server and close the connection."""
        try:
            self._request("DELETE", f"/sessions/{self.session}")
        finally:
            self.http.close()

    def __enter__(self) -> "RemoteClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
