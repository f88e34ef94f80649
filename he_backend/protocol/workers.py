"""A partner process that shares a request: two cores per request.

``tenseal.sealapi`` keeps the GIL through SEAL's calls, so two threads of one process take as
long as one. A :class:`Partner` is a second process (started from a forkserver) holding its own
copy of the plan and of the *public* context. It shares a request in one of two ways:

* a request of several inputs: the partner runs a whole segment of the plan on the second half
  of the inputs (:meth:`Partner.start_segment`) while the server runs the first half;
* one input: for each affine step with several giant-step runs the server sends the step's
  input ciphertexts; the partner computes the sums of the runs ``1..`` while the server computes
  run 0 (:meth:`~he_backend.eval.runner.Runner.partial`), and the server adds the two. Both make
  every baby rotation.

Either way the result is byte for byte that of one process.

Messages are polyact containers (:mod:`he_backend.protocol.serialization`) of SEAL-serialised
ciphertexts over a pipe, never pickles.
"""
from __future__ import annotations

import multiprocessing
import weakref
from multiprocessing.connection import Connection
from typing import Callable

import tenseal.sealapi as sa

from ..eval.runner import Values
from ..eval.steps import AffineStep
from .serialization import pack, seal_from_bytes, seal_to_bytes, unpack

REQUEST_KIND = "partner request"
REPLY_KIND = "partner reply"
READY = b"ready"


class PartnerError(RuntimeError):
    """The partner process failed (its message says how)."""


class Partner:
    """The second process of a server (see the module docstring); :meth:`close` stops it."""

    def __init__(self, plan_bytes: bytes, public_context: bytes, serve: Callable[[Connection], None]) -> None:
        """Start the process, which runs ``serve`` (a module-level function: the partner's loop,
        :func:`he_backend.protocol.server.serve_partner`) on its end of the pipe."""
        context = multiprocessing.get_context("forkserver")  # no copy of this process's SEAL state or locks
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child,), daemon=True, name="polyact-partner")
        self._process.start()
        child.close()
        self._conn.send_bytes(plan_bytes)
        self._conn.send_bytes(public_context)
        ready = self._receive()
        if ready != READY:
            self.close()
            raise PartnerError(f"the partner process could not load the plan: {ready.decode(errors='replace')}")
        self._closer = weakref.finalize(self, _stop, self._conn, self._process)

    def start(self, step: AffineStep, values: Values) -> None:
        """Send ``step``'s input ciphertexts; the partner starts on its runs at once."""
        header = {"step": step.name, "sources": [[name, len(values[name])] for name in step.sources]}
        self._conn.send_bytes(pack(REQUEST_KIND, header, [seal_to_bytes(ct) for name in step.sources
                                                          for ct in values[name]]))

    def start_segment(self, start: int, stop: int, inputs: list[dict[str, list[bytes]]]) -> None:
        """Send the live values of several inputs (SEAL-serialised ciphertexts, as the client
        sent them or :func:`~he_backend.protocol.serialization.seal_to_bytes`); the partner runs steps
        ``start:stop`` of the plan on each (its own runner, not sharing maps back)."""
        header = {"segment": [start, stop], "inputs": [[[name, len(cts)] for name, cts in v.items()] for v in inputs]}
        self._conn.send_bytes(pack(REQUEST_KIND, header, [blob for v in inputs for cts in v.values() for blob in cts]))

    def segment_result(self, context: sa.SEALContext) -> list[Values]:
        """Per input sent by :meth:`start_segment`, the values read after the segment."""
        header, sections = unpack(self._receive(), REPLY_KIND)
        if "error" in header:
            raise PartnerError(f"the partner process failed: {header['error']}")
        blobs = iter(sections)
        return [{name: [seal_from_bytes(sa.Ciphertext, next(blobs), context, "a partner's ciphertext") for _ in range(n)]
                 for name, n in counts} for counts in header["outputs"]]

    def result(self, context: sa.SEALContext) -> dict[int, list[sa.Ciphertext]]:
        """The partner's sums per output ciphertext (after :meth:`start`)."""
        header, sections = unpack(self._receive(), REPLY_KIND)
        if "error" in header:
            raise PartnerError(f"the partner process failed: {header['error']}")
        blobs = iter(sections)
        return {int(i): [seal_from_bytes(sa.Ciphertext, next(blobs), context, "a partner's ciphertext") for _ in range(n)]
                for i, n in header["outputs"]}

    def close(self) -> None:
        """Stop the partner process (also done when the partner is garbage-collected)."""
        closer = getattr(self, "_closer", None)
        if closer is not None:
            closer()
        else:
            _stop(self._conn, self._process)

    def _receive(self) -> bytes:
        try:
            return self._conn.recv_bytes()
        except EOFError:
            raise PartnerError(f"the partner process ended (exit code {self._process.exitcode})") from None


def _stop(conn: Connection, process: multiprocessing.Process) -> None:
    conn.close()  # the partner's receive ends with EOFError and it returns
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
