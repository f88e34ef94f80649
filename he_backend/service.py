"""The encrypted-inference HTTP service (FastAPI): holds a plan and public contexts only.

Endpoints (bodies are polyact's binary formats, ``application/octet-stream``):

- ``GET /health`` -> ``{"status": "ok", "sessions": n}``
- ``GET /layout`` -> the plan's layout (parameters, rotations, packing; no weights): what a
  client needs to make keys and pack inputs
- ``POST /sessions`` with a public context -> ``{"session": id, "expires_in": seconds}``;
  a context with a secret key is refused (403)
- ``POST /sessions/{id}/infer`` with client ciphertexts -> result ciphertexts, or for plans
  with refresh points a refresh request (:mod:`he_backend.refresh`)
- ``POST /sessions/{id}/round`` with the client's refresh reply -> results or the next request;
  the session keeps the inference's ciphertexts and masks between rounds. Every answer carries
  the headers ``X-Polyact-Kind`` (``results`` or ``refresh request``), ``X-Polyact-Bytes-In``
  and ``X-Polyact-Bytes-Out`` (bytes of this round)
- ``DELETE /sessions/{id}``

Bad bytes give 400 with the reason, an unknown or expired session 404, a body over the limit
413, a full session table 503; nothing a client sends can crash the server. Sessions expire
after ``session_ttl`` idle seconds. Servers of all sessions share one plaintext cache.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from .compile import Plan
from .keys import SecretKeyRefused
from .layers import PlaintextCache
from .refresh import message_kind
from .serialization import PayloadError
from .server import Server

OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class ServiceLimits:
    """Session lifetime and size bounds."""

    session_ttl: float = 900.0
    max_sessions: int = 16
    max_body_bytes: int = 128_000_000


class _Session:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.used = time.monotonic()
        self.lock = threading.Lock()


class SessionTable:
    """Live sessions by id, with idle expiry and a size bound."""

    def __init__(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self) -> None:
        deadline = time.monotonic() - self.limits.session_ttl
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.used < deadline]:
                del self._sessions[key]

    def add(self, server: Server) -> str:
        self.expire()
        with self._lock:
            if len(self._sessions) >= self.limits.max_sessions:
                raise HTTPException(503, f"the service holds its maximum of {self.limits.max_sessions} sessions; "
                                         "retry later or delete an unused session")
            key = secrets.token_urlsafe(16)
            self._sessions[key] = _Session(server)
        return key

    def get(self, key: str) -> _Session:
        self.expire()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                raise HTTPException(404, f"unknown or expired session {key!r}; upload the public context again "
                                         "(POST /sessions)")
            session.used = time.monotonic()
        return session

    def remove(self, key: str) -> None:
        with self._lock:
            if self._sessions.pop(key, None) is None:
                raise HTTPException(404, f"unknown or expired session {key!r}")


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {int(declared)} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    if size == 0:
        raise HTTPException(400, "empty request body; send polyact bytes (application/octet-stream)")
    return b"".join(chunks)


def create_app(plan: Plan, limits: ServiceLimits | None = None) -> FastAPI:
    """The FastAPI application serving ``plan``."""
    limits = limits or ServiceLimits()
    sessions = SessionTable(limits)
    cache = PlaintextCache()
    layout_bytes = plan.layout().to_bytes()
    app = FastAPI(title="polyact encrypted inference", description=__doc__)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "sessions": len(sessions), "depth": plan.depth,
                "samples_per_ciphertext": plan.samples_per_ciphertext, "refresh_rounds": len(plan.cuts)}

    @app.get("/layout")
    def get_layout() -> Response:
        return Response(layout_bytes, media_type=OCTETS)

    @app.post("/sessions")
    async def create_session(request: Request) -> dict:
        context = await _body(request, limits.max_body_bytes)
        try:
            server = await run_in_threadpool(Server, plan, context, cache)
        except SecretKeyRefused as exc:
            raise HTTPException(403, str(exc)) from exc
        except (PayloadError, ValueError, RuntimeError) as exc:
            raise HTTPException(400, f"bad public context: {exc}") from exc
        return {"session": sessions.add(server), "expires_in": limits.session_ttl}

    async def answer(key: str, request: Request, action: str, what: str) -> Response:
        session = sessions.get(key)
        payload = await _body(request, limits.max_body_bytes)

        def run() -> bytes:
            with session.lock:
                return getattr(session.server, action)(payload)

        try:
            result = await run_in_threadpool(run)
        except (PayloadError, ValueError, RuntimeError) as exc:
            raise HTTPException(400, f"bad {what}: {exc}") from exc
        headers = {"X-Polyact-Kind": message_kind(result), "X-Polyact-Bytes-In": str(len(payload)),
                   "X-Polyact-Bytes-Out": str(len(result))}
        return Response(result, media_type=OCTETS, headers=headers)

    @app.post("/sessions/{key}/infer")
    async def infer(key: str, request: Request) -> Response:
        return await answer(key, request, "start", "ciphertexts")

    @app.post("/sessions/{key}/round")
    async def refresh_round(key: str, request: Request) -> Response:
        return await answer(key, request, "resume", "refresh reply")

    @app.delete("/sessions/{key}")
    def delete_session(key: str) -> dict:
        sessions.remove(key)
        return {"deleted": key}

    return app
