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

Bad bytes give 400 with the reason (a malformed header field is named with the type it needs), a
body that is not ``application/octet-stream`` 415, an unknown or expired session 404, a body over
the limit 413 (also when streamed without a Content-Length), a body not complete within
``upload_timeout`` seconds 408, a full session table or memory budget 503 before the body is read;
nothing a client sends can crash the server. A session's slot is taken only once its public
context has arrived, so slow uploads cannot hold slots; a client that disconnects is dropped
quietly. A public context larger than the plan's keys (:func:`~he_backend.service.memory.context_limit`:
Galois keys the plan does not need) is refused with 413. The access log shows a session id only
as a short hash (:func:`redact`): with no tokens the id is the capability to use the session. With tokens (:mod:`he_backend.service.auth`) every request needs
``Authorization: Bearer TOKEN`` (401 otherwise), a token sees only its own sessions and holds at
most its quota of them (429). Sessions expire after ``session_ttl`` idle seconds. Servers of all
sessions share one plaintext cache.

Memory: a session's cost is known from the layout (:func:`he_backend.service.memory.session_bytes`);
with ``max_memory_bytes`` a new session is admitted only while the resident memory at start,
the weight cache's bound (``cache_bytes``), one evaluation's working set (SEAL's pool keeps and
reuses it), the cost of the live sessions and of one upload stay within the budget. Bodies in
flight count too (:data:`~he_backend.service.memory.BODY_COPIES` times their bytes, from the first
byte until the answer is sent): a body that would pass the budget is refused with 503. Deleted and
expired sessions are collected and glibc's free pages returned to the OS.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..eval.runner import PlaintextCache
from ..protocol.bundle import ServerBundle
from ..protocol.keys import SecretKeyRefused, load_public_context
from ..protocol.plan import Plan
from ..protocol.refresh import message_kind
from ..protocol.serialization import PayloadError
from ..protocol.server import Server
from .auth import Tokens
from .memory import BODY_COPIES, KEY_COPIES, context_limit, evaluation_bytes, release_memory, rss_bytes, session_bytes, upload_bytes

OCTETS = "application/octet-stream"
CONTEXT_TOO_BIG = (" for a public context of this plan (its keys); send only the Galois keys of the plan's rotations "
                   "(GET /client-bundle, Client.public_context())")


@dataclass(frozen=True)
class ServiceLimits:
    """Session lifetime, size bounds, the memory budget (``None``: unbounded) and the share of
    it the encoded weights shared by all sessions may take."""

    session_ttl: float = 900.0
    max_sessions: int = 16
    max_body_bytes: int = 128_000_000
    max_memory_bytes: int | None = None
    cache_bytes: int = 2 << 30
    upload_timeout: float = 120.0


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
        self.inflight_bytes = 0  # request bodies being read or answered (BODY_COPIES x their size)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def reserved_bytes(self) -> int:
        """Memory the budget counts as taken: the base, every session's cost and the bodies in flight."""
        return self.base_bytes + self.inflight_bytes + sum(s.cost for s in list(self._sessions.values()))

    def hold(self, size: int) -> None:
        """Count ``size`` more bytes of bodies in flight; 503 if they would pass the memory budget."""
        with self._lock:
            budget = self.limits.max_memory_bytes
            if budget is not None and self.reserved_bytes + size > budget:
                raise HTTPException(503, f"the memory budget of {budget / 2**30:.2f} GiB cannot hold this request body "
                                         "now; retry later")
            self.inflight_bytes += size

    def release(self, size: int) -> None:
        with self._lock:
            self.inflight_bytes -= size

    def expire(self) -> None:
        deadline = time.monotonic() - self.limits.session_ttl
        with self._lock:
            stale = [k for k, s in self._sessions.items() if s.used < deadline and s.server is not None]
            for key in stale:
                del self._sessions[key]
        if stale:
            release_memory()

    def reserve(self, owner: str | None = None, cost: int = 0, quota: int | None = None, extra: int = 0,
                *, check_only: bool = False) -> str:
        """A slot for a new session of ``owner`` costing ``cost`` bytes (``extra`` more only
        while it is created), checked against the table size, the owner's quota and the memory
        budget; fill it with :meth:`fill`. ``check_only``: only check (503 / 429 before a body
        is read), take nothing."""
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
            if check_only:
                return ""
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

    def remove(self, key: str, owner: str | None = None, release: bool = True) -> None:
        """Delete a session; ``release``: collect garbage and trim the heap (a second or so on a
        large heap: not for a slot whose context was refused)."""
        with self._lock:
            session = self._sessions.get(key)
            if session is None or session.owner != owner:
                raise HTTPException(404, f"unknown or expired session {key!r}")
            del self._sessions[key]
        if release:
            release_memory()


@contextlib.asynccontextmanager
async def _body(request: Request, limit: int, table: SessionTable, why: str = "") -> AsyncIterator[bytes]:
    """The request body, counted as in flight (:meth:`SessionTable.hold`) until the block ends;
    refused with 415 unless it is ``application/octet-stream``, with 413 as soon as it passes
    ``limit`` bytes (announced or streamed), with 408 unless it is complete within the
    ``upload_timeout``. A client that disconnects raises :class:`ClientDisconnect`."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != OCTETS:
        raise HTTPException(415, f"send polyact bytes as Content-Type: {OCTETS} (got {kind or 'none'!r})")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {int(declared)} bytes exceeds the limit of {limit}{why}")
    chunks, held = [], 0

    async def read() -> None:
        nonlocal held
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes{why}")
            table.hold(BODY_COPIES * len(chunk))
            held += BODY_COPIES * len(chunk)
            chunks.append(chunk)

    try:
        try:
            await asyncio.wait_for(read(), table.limits.upload_timeout)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {table.limits.upload_timeout:g} s; "
                                     "send it at once") from None
        if not any(chunks):
            raise HTTPException(400, "empty request body; send polyact bytes (application/octet-stream)")
        body = b"".join(chunks)
        chunks.clear()
        yield body
    finally:
        table.release(held)


SESSION_PATH = re.compile(r"(/sessions/)([^/?\s]+)")


def redact(text: str) -> str:
    """``text`` with every session id after ``/sessions/`` replaced by the first 8 hex digits of
    its SHA-256: enough to follow one session through a log, useless as a capability."""
    return SESSION_PATH.sub(lambda m: m.group(1) + "#" + hashlib.sha256(m.group(2).encode()).hexdigest()[:8], text)


class RedactSessions(logging.Filter):
    """Rewrites uvicorn's access-log records (``client, method, path, version, status``) so that
    no session id is written (:func:`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSessions) for f in access.filters):
        access.addFilter(RedactSessions())


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
    context_bytes = min(limits.max_body_bytes, context_limit(plan))
    needed_keys = len({r % plan.params.slots for r in plan.rotations})
    _redact_access_log()
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
            unneeded = sorted(set(load_public_context(context).rotations) - set(plan.rotations))
            if unneeded:
                raise PayloadError(f"it carries Galois keys for rotations {unneeded[:8]} that this plan does not use; "
                                   "make keys for this plan's layout (GET /client-bundle, Client.public_context())")
            server = Server(plan, context, cache)
            held = server.engine.galois_keys.size() if server.engine.galois_keys is not None else 0
            if held > needed_keys:
                raise PayloadError(f"it carries {held} Galois keys, this plan uses {needed_keys}; make keys for this "
                                   "plan's layout (GET /client-bundle, Client.public_context())")
            return server
        except SecretKeyRefused as exc:
            raise HTTPException(403, str(exc)) from exc
        except (PayloadError, ValueError, RuntimeError) as exc:
            raise HTTPException(400, f"bad public context: {exc}") from exc

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "sessions": len(sessions), "depth": plan.depth,
                "samples_per_ciphertext": plan.samples_per_ciphertext, "refresh_rounds": len(plan.cuts),
                "memory": {"rss_bytes": rss_bytes(), "reserved_bytes": sessions.reserved_bytes,
                           "inflight_bytes": sessions.inflight_bytes,
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
    async def create_session(request: Request) -> Response:
        owner = owner_of(request)
        quota = tokens.quotas[owner] if tokens else None
        sessions.reserve(owner, cost, quota, extra, check_only=True)  # a full table answers before the body
        try:
            async with _body(request, context_bytes, sessions, CONTEXT_TOO_BIG) as context:
                # the slot is taken only now that the body is here: slow uploads hold no slot
                key = sessions.reserve(owner, max(cost, int(KEY_COPIES * len(context))), quota)
                try:
                    server = await run_in_threadpool(server_for, context)
                    if await request.is_disconnected():  # nobody will learn the id: free the slot now
                        raise ClientDisconnect
                except BaseException:
                    sessions.remove(key, owner, release=False)
                    raise
        except ClientDisconnect:
            return _gone()
        sessions.fill(key, server)
        return JSONResponse({"session": key, "expires_in": limits.session_ttl})

    async def answer(key: str, request: Request, action: str, what: str) -> Response:
        session = sessions.get(key, owner_of(request))
        try:
            async with _body(request, limits.max_body_bytes, sessions) as payload:

                def run() -> bytes:
                    with session.lock:
                        return getattr(session.server, action)(payload)

                try:
                    result = await run_in_threadpool(run)
                except (PayloadError, ValueError, RuntimeError) as exc:
                    raise HTTPException(400, f"bad {what}: {exc}") from exc
                if await request.is_disconnected():  # nobody to answer: drop the result now
                    return _gone()
                headers = {"X-Polyact-Kind": message_kind(result), "X-Polyact-Bytes-In": str(len(payload)),
                           "X-Polyact-Bytes-Out": str(len(result))}
                return Response(result, media_type=OCTETS, headers=headers)
        except ClientDisconnect:
            return _gone()

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


def _gone() -> Response:
    """The answer to a client that disconnected: nobody reads it, nothing is logged but the access line."""
    return Response(status_code=499)
