"""The client of the HTTP service (:mod:`he_backend.service.app`): keys stay here, the service
gets the public context and ciphertexts."""
from __future__ import annotations

import json
import ssl
import time
from typing import Any

import numpy as np

from ..protocol.bundle import ClientBundle
from ..protocol.client import Client
from ..protocol.refresh import Rounds, drive


class ServiceError(RuntimeError):
    """The service answered with an error status; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RemoteClient:
    """A client of the HTTP service (:mod:`he_backend.service.app`): fetches the client bundle (the
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
