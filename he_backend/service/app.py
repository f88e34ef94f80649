"""The encrypted-inference HTTP service (FastAPI): holds a plan and public contexts only.

Endpoints (bodies are polyact's binary formats, ``application/octet-stream``):

- ``GET /health`` -> ``{"status": "ok", "sessions": n}``
- ``GET /layout`` -> the plan's layout (parameters, rotations, packing; no weights): what a
  client needs to make keys and pack inputs
- ``GET /client-bundle`` -> the layout and the calibrated input range (:mod:`he_backend.protocol.bundle`)
- ``POST /sessions`` with a public context -> ``{"session": id, "expires_in": seconds}``;
  a context with a secret key is refused (403)
- ``POST /sessions/{id}/infer`` with client ciphertexts -> result ciphertexts, or for plans
  with refresh points a refresh request (:mod:`he_backend.protocol.refresh`)
- ``POST /sessions/{id}/round`` with the client's refresh reply -> results or the next request;
  the session keeps the inference's ciphertexts and masks between rounds. Every answer carries
  the headers ``X-Polyact-Kind`` (``results`` or ``refresh request``), ``X-Polyact-Bytes-In``
  and ``X-Polyact-Bytes-Out`` (bytes of this round)
- ``DELETE /sessions/{id}``

Bad bytes give 400 with the reason, a body that is not ``application/octet-stream`` 415, an
unknown or expired session 404, a body over the limit 413 (also when streamed without a
Content-Length), a full session table or memory budget 503 before the body is read; nothing a
client sends can crash the server. With tokens (:mod:`he_backend.service.auth`) every request needs
``Authorization: Bearer TOKEN`` (401 otherwise), a token sees only its own sessions and holds at
most its quota of them (429). Sessions expire after ``session_ttl`` idle seconds. Servers of all
sessions share one plaintext cache.

Memory: a session's cost is known from the layout (:func:`he_backend.service.memory.session_bytes`);
with ``max_memory_bytes`` a new session is admitted only while the resident memory at start,
the weight cache's bound (``cache_bytes``), one evaluation's working set (SEAL's pool keeps and
reuses it), the cost of the live sessions and of one upload stay within the budget. Deleted and
expired sessions are collected and glibc's free pages returned to the OS.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..eval.runner import PlaintextCache
from ..protocol.bundle import ServerBundle
from ..protocol.keys import SecretKeyRefused
from ..protocol.plan import Plan
from ..protocol.refresh import message_kind
from ..protocol.serialization import PayloadError
from ..protocol.server import Server
from .auth import Tokens
from .memory import evaluation_bytes, release_memory, rss_bytes, session_bytes, upload_bytes

OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class ServiceLimits:
    """Session lifetime, size bounds, the memory budget (``None``: unbounded) and the share of
    it the encoded weights shared by all sessions may take."""

    session_ttl: float = 900.0
    max_sessions: int = 16
    max_body_bytes: int = 128_000_000
    max_memory_bytes: int | None = None
    cache_bytes: int = 2 << 30


class _Session:
    def __init__(self, owner: str | None, cost: int) -> None:
        self.server: Server | None = None  # None while the public context is being read
        self.owner = owner
        self.cost = cost
        self.used = time.monotonic()
        self.lock = threading.Lock()


class SessionTable:
    """Live sessions by id, with idle expiry, a size bound, per-owner quotas and a memory budget
    (``base_bytes`` plus the sessions' costs)."""

    def __init__(self, limits: ServiceLimits, base_bytes: int = 0) -> None:
        self.limits = limits
        self.base_bytes = base_bytes
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def reserved_bytes(self) -> int:
        """Memory the budget counts as taken: the base and every session's cost."""
        return self.base_bytes + sum(s.cost for s in list(self._sessions.values()))

    def expire(self) -> None:
        deadline = time.monotonic() - self.limits.session_ttl
        with self._lock:
            stale = [k for k, s in self._sessions.items() if s.used < deadline and s.server is not None]
            for key in stale:
                del self._sessions[key]
        if stale:
            release_memory()

    def reserve(self, owner: str | None = None, cost: int = 0, quota: int | None = None, extra: int = 0) -> str:
        """A slot for a new session of ``owner`` costing ``cost`` bytes (``extra`` more only
        while it is created), checked against the table size, the owner's quota and the memory
        budget before its public context is read; fill it with :meth:`fill`."""
        self.expire()
        with self._lock:
            if len(self._sessions) >= self.limits.max_sessions:
                raise HTTPException(503, f"the service holds its maximum of {self.limits.max_sessions} sessions; "
                                         "retry later or delete an unused session")
            held = sum(1 for s in self._sessions.values() if s.owner == owner)
            if quota is not None and held >= quota:
                raise HTTPException(429, f"this token holds its quota of {quota} sessions; delete one "
                                         "(DELETE /sessions/{id}) or wait for one to expire")
            budget = self.limits.max_memory_bytes
            needed = self.reserved_bytes + cost + extra
            if budget is not None and needed > budget:
                raise HTTPException(503, f"the memory budget of {budget / 2**30:.2f} GiB cannot hold another session "
                                         f"(it needs {(cost + extra) / 2**20:.0f} MiB, {self.reserved_bytes / 2**20:.0f} MiB "
                                         "are taken); retry later or delete an unused session")
            key = secrets.token_urlsafe(16)
            self._sessions[key] = _Session(owner, cost)
        return key

    def fill(self, key: str, server: Server) -> None:
        self._sessions[key].server = server

    def add(self, server: Server, owner: str | None = None, cost: int = 0) -> str:
        """Reserve and fill a slot at once."""
        key = self.reserve(owner, cost)
        self.fill(key, server)
        return key

    def get(self, key: str, owner: str | None = None) -> _Session:
        self.expire()
        with self._lock:
            session = self._sessions.get(key)
            if session is None or session.server is None or session.owner != owner:
                raise HTTPException(404, f"unknown or expired session {key!r}; upload the public context again "
                                         "(POST /sessions)")
            session.used = time.monotonic()
        return session

    def remove(self, key: str, owner: str | None = None) -> None:
        with self._lock:
            session = self._sessions.get(key)
            if session is None or session.owner != owner:
                raise HTTPException(404, f"unknown or expired session {key!r}")
            del self._sessions[key]
        release_memory()


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 415 unless it is ``application/octet-stream`` and with
    413 as soon as it passes ``limit`` bytes, announced or streamed (chunked)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != OCTETS:
        raise HTTPException(415, f"send polyact bytes as Content-Type: {OCTETS} (got {kind or 'none'!r})")
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


def create_app(deployment: Plan | ServerBundle, limits: ServiceLimits | None = None,
               tokens: Tokens | None = None) -> FastAPI:
    """The FastAPI application serving a plan or a server bundle; ``tokens``: require bearer
    tokens, each with its session quota."""
    bundle = deployment if isinstance(deployment, ServerBundle) else ServerBundle(deployment)
    plan = bundle.plan
    limits = limits or ServiceLimits()
    cost, extra = session_bytes(plan), upload_bytes(plan)
    base = rss_bytes() + limits.cache_bytes + evaluation_bytes(plan) if limits.max_memory_bytes else 0
    sessions = SessionTable(limits, base_bytes=base)
    if limits.max_memory_bytes is not None and sessions.base_bytes + cost + extra > limits.max_memory_bytes:
        raise ValueError(
            f"a memory budget of {limits.max_memory_bytes / 2**30:.2f} GiB cannot hold one session of this plan: "
            f"the process, its weight cache and an evaluation take {sessions.base_bytes / 2**20:.0f} MiB and a session "
            f"{(cost + extra) / 2**20:.0f} MiB; raise --max-memory-gb"
        )
    cache = PlaintextCache(limits.cache_bytes)
    layout_bytes = plan.layout().to_bytes()
    client_bundle_bytes = bundle.client_bundle().to_bytes()
    app = FastAPI(title="polyact encrypted inference", description=__doc__)

    def owner_of(request: Request) -> str | None:
        if tokens is None:
            return None
        owner = tokens.owner(request.headers.get("authorization"))
        if owner is None:
            raise HTTPException(401, "this service needs Authorization: Bearer TOKEN (a token from its --token-file)",
                                headers={"WWW-Authenticate": "Bearer"})
        return owner

    def server_for(context: bytes) -> Server:
        try:
            return Server(plan, context, cache)
        except SecretKeyRefused as exc:
            raise HTTPException(403, str(exc)) from exc
        except (PayloadError, ValueError, RuntimeError) as exc:
            raise HTTPException(400, f"bad public context: {exc}") from exc

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "sessions": len(sessions), "depth": plan.depth,
                "samples_per_ciphertext": plan.samples_per_ciphertext, "refresh_rounds": len(plan.cuts),
                "memory": {"rss_bytes": rss_bytes(), "reserved_bytes": sessions.reserved_bytes,
                           "budget_bytes": limits.max_memory_bytes, "session_bytes": cost}}

    @app.get("/layout")
    def get_layout(request: Request) -> Response:
        owner_of(request)
        return Response(layout_bytes, media_type=OCTETS)

    @app.get("/client-bundle")
    def get_client_bundle(request: Request) -> Response:
        owner_of(request)
        return Response(client_bundle_bytes, media_type=OCTETS)

    @app.post("/sessions")
    async def create_session(request: Request) -> dict:
        owner = owner_of(request)
        key = sessions.reserve(owner, cost, tokens.quotas[owner] if tokens else None, extra)
        try:
            context = await _body(request, limits.max_body_bytes)
            server = await run_in_threadpool(server_for, context)
        except BaseException:
            sessions.remove(key, owner)
            raise
        sessions.fill(key, server)
        return {"session": key, "expires_in": limits.session_ttl}

    async def answer(key: str, request: Request, action: str, what: str) -> Response:
        session = sessions.get(key, owner_of(request))
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
    def delete_session(key: str, request: Request) -> dict:
        sessions.remove(key, owner_of(request))
        return {"deleted": key}

    return app
