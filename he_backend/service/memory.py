"""Resident memory of this process: measure it, estimate a session's share, give freed memory back.

A session holds its public context deserialised: relinearisation and Galois keys, each
``(L+1)·L`` polynomials of ``N`` 64-bit words per component, 2 components (the seeded
serialisation the client uploads is half that). SEAL allocates them from its memory pool, which
keeps freed blocks for reuse; glibc keeps freed heap pages until ``malloc_trim``.
"""
from __future__ import annotations

import ctypes
import gc
import os

from ..protocol.plan import Plan
from ..protocol.plan_layout import PlanLayout

KEY_COPIES = 4.0  # a session's deserialised keys and SEAL context: measured ~4x the seeded key size
TRANSIENT_COPIES = 3.0  # while a session is created: the body, the parsed sections, SEAL's load buffer
BODY_COPIES = 3  # a request body in flight: its chunks, the joined bytes, the parsed sections
CONTEXT_SLACK = 1.25  # a public context may exceed public_context_bytes by this factor (plus 64 KiB)
WORKING_CIPHERTEXTS = 128  # an evaluation's working set (step values, SEAL's pool): measured ~123 for the digits MLP


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def public_context_bytes(layout: Plan | PlanLayout) -> int:
    """Seeded size of a plan's public context: one relinearisation key and one Galois key per
    rotation, each ``(L+1)·L·N·8`` bytes for ``L`` data primes and ring degree ``N``."""
    params = layout.params
    top = params.depth + 1
    return (top + 1) * top * params.poly_modulus_degree * 8 * (1 + len(layout.rotations))


def context_limit(layout: Plan | PlanLayout) -> int:
    """The largest public context a session of this plan accepts: its keys' seeded size with
    ``CONTEXT_SLACK`` and 64 KiB of headers; more is Galois keys the plan does not need."""
    return int(CONTEXT_SLACK * public_context_bytes(layout)) + (64 << 10)


def session_bytes(layout: Plan | PlanLayout) -> int:
    """Memory one session holds, known from the layout before any byte is read: its
    deserialised keys and SEAL context."""
    return int(KEY_COPIES * public_context_bytes(layout))


def evaluation_bytes(layout: Plan | PlanLayout) -> int:
    """Working memory of an evaluation, ciphertexts of ``2·L·N·8`` bytes; SEAL's memory pool
    keeps it for the next evaluation (of any session)."""
    params = layout.params
    return WORKING_CIPHERTEXTS * 2 * (params.depth + 1) * params.poly_modulus_degree * 8


def upload_bytes(layout: Plan | PlanLayout) -> int:
    """Extra memory while a session is created: copies of the upload being parsed."""
    return int(TRANSIENT_COPIES * public_context_bytes(layout))


def release_memory() -> None:
    """Collect garbage and ask glibc to return free heap pages to the OS (no-op elsewhere)."""
    gc.collect()
    try:  # the C library this process already uses (find_library would fork ldconfig)
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)
