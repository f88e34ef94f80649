"""Where a plan's server time goes: seconds and calls per step and per CKKS primitive.

:func:`profile` swaps the :class:`~he_backend.eval.ckks.Engine`'s SEAL evaluator and encoder for
proxies that count and time every call, runs the plan's steps on one ciphertext and puts the
originals back. Primitives are SEAL's calls: ``rotate`` (``rotate_vector``, a key switch),
``pt_mul`` (``multiply_plain``), ``ct_ct_mul`` (``multiply``/``square``), ``relin``, ``rescale``,
``mod_switch``, ``add`` (ciphertext and plaintext additions) and ``encode``.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import tenseal.sealapi as sa

from polyact.approx.schedule import plan_polynomial

from ..eval.params import choose_params
from ..eval.polyeval import PolyEvaluator
from ..eval.steps import AffineStep
from .keys import KeyHolder

PRIMITIVES = {
    "rotate_vector": "rotate", "multiply_plain": "pt_mul", "multiply": "ct_ct_mul", "square": "ct_ct_mul",
    "relinearize_inplace": "relin", "rescale_to_next_inplace": "rescale", "mod_switch_to": "mod_switch",
    "add": "add", "sub": "add", "add_plain": "add", "encode": "encode",
}


class _Timed:
    """Forwards attribute access to ``target``; the calls named in :data:`PRIMITIVES` are
    counted and timed into ``calls`` / ``seconds``."""

    def __init__(self, target: Any, calls: Counter, seconds: defaultdict) -> None:
        self._target, self._calls, self._seconds = target, calls, seconds

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        primitive = PRIMITIVES.get(name)
        if primitive is None:
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._seconds[primitive] += elapsed
                self._calls[primitive] += 1

        return timed


@contextmanager
def instrumented(engine) -> Iterator[tuple[Counter, defaultdict]]:
    """Within the block, ``engine``'s SEAL calls are counted and timed into the yielded
    ``(calls, seconds)``."""
    calls, seconds = Counter(), defaultdict(float)
    evaluator, encoder = engine.evaluator, engine.encoder
    engine.evaluator, engine.encoder = _Timed(evaluator, calls, seconds), _Timed(encoder, calls, seconds)
    try:
        yield calls, seconds
    finally:
        engine.evaluator, engine.encoder = evaluator, encoder


@dataclass
class Profile:
    """Per step: seconds and primitive calls/seconds; ``total_seconds`` of the whole run."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    total_seconds: float = 0.0

    def totals(self) -> dict[str, dict[str, float]]:
        """Per primitive over all steps: ``{"calls": n, "seconds": s}``."""
        out: dict[str, dict[str, float]] = {}
        for row in self.steps:
            for name, n in row["calls"].items():
                entry = out.setdefault(name, {"calls": 0, "seconds": 0.0})
                entry["calls"] += n
                entry["seconds"] += row["primitive_seconds"][name]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"total_seconds": self.total_seconds, "primitives": self.totals(), "steps": self.steps}

    def table(self) -> str:
        names = sorted(self.totals(), key=lambda k: -self.totals()[k]["seconds"])
        lines = [f"{'step':<24} {'kind':<7} {'level':>5} {'seconds':>8} " + " ".join(f"{n:>13}" for n in names)]
        for r in self.steps:
            cells = " ".join(f"{r['calls'].get(n, 0):>5} {r['primitive_seconds'].get(n, 0.0):>7.3f}" for n in names)
            lines.append(f"{r['step'][:24]:<24} {r['kind']:<7} {r['level']:>5} {r['seconds']:>8.3f} {cells}")
        t = self.totals()
        cells = " ".join(f"{int(t[n]['calls']):>5} {t[n]['seconds']:>7.3f}" for n in names)
        lines.append(f"{'total':<24} {'':<7} {'':>5} {self.total_seconds:>8.3f} {cells}")
        return "\n".join(lines)


def profile(plan, x: np.ndarray, *, warmup: int = 1) -> Profile:
    """Encrypt one sample ``x`` (``input_shape``) for ``plan``, run the plan's steps on it with a
    server holding the public context only, and time each step and each SEAL primitive.
    ``warmup`` runs first fill the plaintext cache, as in a serving process; ``warmup=0``
    includes the first request's encodes. One process (a partner process's work would not be
    counted here)."""
    from .client import CIPHERTEXTS, Client
    from .serialization import seal_from_bytes, unpack
    from .server import Server

    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    client = Client(plan)
    server = Server(plan, client.public_context())
    _, blobs = unpack(client.encrypt(np.asarray(x, dtype=np.float64)[None]), CIPHERTEXTS)
    cts = [seal_from_bytes(sa.Ciphertext, blob, server.engine.context, "ciphertext")
           for blob in blobs[: plan.ciphertexts("input")]]  # the first input's ciphertexts
    for _ in range(warmup):
        server.evaluate(cts)
    result = Profile()
    values = {"input": cts}
    start_all = time.perf_counter()
    for step in plan.steps:
        with instrumented(server.engine) as (calls, seconds):
            start = time.perf_counter()
            values[step.name] = server.runner.affine(step, values) if isinstance(step, AffineStep) \
                else server.runner.polynomial(step, values)
            elapsed = time.perf_counter() - start
        kind = ("identity" if step.identity else "affine") if isinstance(step, AffineStep) else step.kind
        result.steps.append({"step": step.name, "kind": kind, "level": step.level, "seconds": elapsed,
                             "calls": dict(calls), "primitive_seconds": dict(seconds)})
    result.total_seconds = time.perf_counter() - start_all
    return result


def time_polynomial(degree: int, scale_bits: int = 40, *, min_n: int = 8192, repeat: int = 3) -> dict:
    """Median seconds to evaluate a dense degree-``degree`` series on one full ciphertext with
    the smallest secure ring (at least ``min_n``) that fits its depth; also levels and products."""
    import statistics
    import time


    plan = plan_polynomial(np.random.default_rng(degree).normal(size=degree + 1), scale_bits=scale_bits)
    params = choose_params(plan.depth, min_scale_bits=scale_bits, max_scale_bits=scale_bits, min_n=min_n)
    keys = KeyHolder(params)
    ct = keys.encrypt(np.random.default_rng(0).uniform(-1, 1, keys.engine.slots))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        PolyEvaluator(keys.engine).evaluate(plan, ct)
        times.append(time.perf_counter() - start)
    return {"degree": degree, "depth": plan.depth, "ct_ct_mults": plan.ct_ct_mults,
            "N": params.poly_modulus_degree, "seconds": statistics.median(times)}
