"""The server: runs a plan on ciphertexts with public evaluation keys only."""
from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from .ckks import Engine
from .client import CIPHERTEXTS, KEY_FIELD, RESULTS, layout_header
from .compile import Plan
from .keys import key_fingerprint, load_public_context
from .layers import AffineStep, PlaintextCache, Runner
from .serialization import PayloadError, pack, seal_from_bytes, seal_to_bytes, unpack


class Server:
    """Holds a :class:`Plan` and a public context (refused if it contains a secret key);
    :meth:`run` maps the client's ciphertext bytes to result bytes. Servers of one plan may
    share a :class:`~he_backend.layers.PlaintextCache` (encoded weights)."""

    def __init__(self, plan: Plan, public_context: bytes, cache: PlaintextCache | None = None) -> None:
        public = load_public_context(public_context)
        if public.params != plan.params:
            raise PayloadError(
                f"the public context was made for {public.params}, the plan needs {plan.params}; "
                "create the keys with plan.client()"
            )
        missing = set(plan.rotations) - set(public.rotations)
        if missing or (plan.rotations and public.galois_keys is None):
            raise PayloadError(f"the public context lacks Galois keys for rotations {sorted(missing)}")
        self.plan = plan
        self.fingerprint = key_fingerprint(public_context)
        self.engine = Engine(plan.params)
        self.engine.load_keys(public.relin_keys, public.galois_keys)
        self.runner = Runner(self.engine, plan.block, plan.baby, cache)

    @classmethod
    def from_bytes(cls, plan_bytes: bytes, public_context: bytes, **kwargs) -> "Server":
        return cls(Plan.from_bytes(plan_bytes), public_context, **kwargs)

    def evaluate(self, ct: sa.Ciphertext) -> sa.Ciphertext:
        """The plan applied to one ciphertext."""
        e = self.engine
        top = self.plan.params.depth + 1
        if e.level(ct) != top or not np.isclose(ct.scale, self.plan.params.scale, rtol=1e-9):
            raise PayloadError(
                f"ciphertext at level {e.level(ct)} with scale 2^{np.log2(ct.scale):.1f}; this plan "
                f"expects fresh ciphertexts at level {top} and scale 2^{self.plan.params.scale_bits}"
            )
        values = {"input": ct}
        for step in self.plan.steps:
            values[step.name] = self.runner.affine(step, values) if isinstance(step, AffineStep) \
                else self.runner.polynomial(step, values)
        return values[self.plan.output]

    def run(self, data: bytes) -> bytes:
        """Evaluate every ciphertext of a client's batch; malformed input raises
        :class:`PayloadError` saying what is wrong."""
        header, blobs = unpack(data, CIPHERTEXTS)
        expected = layout_header(self.plan)
        wrong = {k: header.get(k) for k in expected if header.get(k) != expected[k]}
        if wrong:
            raise PayloadError(f"these ciphertexts were packed for another plan ({wrong} differ from {expected})")
        if header.get(KEY_FIELD) != self.fingerprint:
            raise PayloadError(
                f"these ciphertexts were encrypted for the keys with fingerprint {header.get(KEY_FIELD)!r}, but this "
                f"server (session) holds the public context {self.fingerprint}: send them to the session created "
                "with the same client's public_context()"
            )
        samples, per = header.get("samples"), header.get("per_ciphertext")
        if not isinstance(samples, int) or not isinstance(per, int) or per < 1 or -(-samples // per) != len(blobs):
            raise PayloadError(f"the batch header announces {samples} samples at {per} per ciphertext but holds {len(blobs)} ciphertexts")
        outputs = []
        for blob in blobs:
            ct = seal_from_bytes(sa.Ciphertext, blob, self.engine.context, "ciphertext")
            outputs.append(seal_to_bytes(self.evaluate(ct)))
        return pack(RESULTS, {**expected, "samples": samples, "per_ciphertext": per, KEY_FIELD: self.fingerprint},
                    outputs)
