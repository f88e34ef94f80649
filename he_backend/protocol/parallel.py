"""Encrypted batch jobs on a local process pool or a Ray cluster.

Ciphertexts are independent, so a large job splits into one chunk of whole ciphertexts per
worker; each worker (a pool process, or a Ray task) builds a :class:`~he_backend.protocol.server.Server`
from the plan bytes and the client's *public* context (the secret key stays in the calling
process) and evaluates its chunk.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .client import Client
from .plan import Plan
from .refresh import Rounds, run_interactive
from .server import Server


def _evaluate(plan_bytes: bytes, public_context: bytes, payload: bytes) -> bytes:
    return Server.from_bytes(plan_bytes, public_context).run(payload)


def _ray_map(plan_bytes: bytes, public_context: bytes, payloads: list[bytes], address: str) -> list[bytes]:
    """One Ray task per chunk (Ray's task API); ``address="local"`` starts a local instance."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("Ray is not installed: pip install 'polyact[ray]'") from exc
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(_evaluate)
        plan_ref, context_ref = ray.put(plan_bytes), ray.put(public_context)
        return ray.get([task.remote(plan_ref, context_ref, p) for p in payloads])
    finally:
        if started:  # a connection (or local instance) made here is not left running
            ray.shutdown()


@dataclass
class EncryptedRun:
    """Decrypted outputs ``(n, output_length)``, seconds per phase and the refresh rounds'
    totals (``rounds``, ``bytes_down``, ``bytes_up``)."""

    outputs: np.ndarray
    seconds: dict[str, float]
    rounds: dict[str, int] = field(default_factory=lambda: Rounds().totals())


def run_encrypted(plan: Plan, x: np.ndarray, *, workers: int = 1, client: Client | None = None,
                  ray_address: str | None = None) -> EncryptedRun:
    """Encrypt ``x`` (``(n, *input_shape)``), evaluate it in ``workers`` chunks of whole
    ciphertexts and decrypt. The chunks run in this process (``workers=1``), on a local process
    pool, or as Ray tasks when ``ray_address`` is given (``"local"``, ``"auto"`` or a cluster
    address; needs ``pip install 'polyact[ray]'``)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if plan.cuts and (workers > 1 or ray_address is not None):
        raise ValueError(f"this plan needs {len(plan.cuts)} refresh round(s) with the client, which run in this "
                         "process only; use workers=1 without Ray")
    client = client or plan.client()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    per = plan.samples_per_ciphertext
    ciphertexts = -(-len(x) // per)
    chunk = per * -(-ciphertexts // workers)
    payloads = [client.encrypt(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    seconds["encrypt_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    rounds = Rounds()
    if ray_address is not None:
        results = _ray_map(plan.to_bytes(), client.public_context(), payloads, ray_address)
    elif workers == 1:
        server = Server(plan, client.public_context())
        results = [run_interactive(client, server, p, rounds) for p in payloads]
    else:
        count = len(payloads)  # one chunk per worker: each builds its server once
        # forkserver: workers start from a small fresh process, not a fork of this one (which may
        # hold a model, keys and SEAL's memory pool, and threads that a fork would copy mid-lock)
        with ProcessPoolExecutor(min(workers, count), mp_context=multiprocessing.get_context("forkserver")) as pool:
            results = list(pool.map(_evaluate, [plan.to_bytes()] * count, [client.public_context()] * count, payloads))
    seconds["server_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    outputs = np.concatenate([client.decrypt(r) for r in results])
    seconds["decrypt_seconds"] = time.perf_counter() - start
    seconds["seconds_per_sample"] = sum(seconds.values()) / len(x)
    return EncryptedRun(outputs, seconds, rounds.totals())
