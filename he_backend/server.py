"""The server: runs a plan on ciphertexts with public evaluation keys only."""
from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from .ckks import Engine
from .client import CIPHERTEXTS, RESULTS, layout_header
from .compile import Plan
from .keys import load_public_context
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
        self.engine = Engine(plan.params)
        self.engine.load_keys(public.relin_keys, public.galois_keys)
        self.runner = Runner(self.engine, plan.block, plan.baby, cache)

    @classmethod
    def from_bytes(cls, plan_bytes: bytes, public_context: bytes, **kwargs) -> "Server":
        return cls(Plan.from_bytes(plan_bytes), public_context, **kwargs)

    def evaluate(self, ct: sa.Ciphertext | list[sa.Ciphertext]) -> sa.Ciphertext | list[sa.Ciphertext]:
        """The plan applied to one input: a ciphertext, or the list of ciphertexts of a sample
        that spans several (then a list comes back)."""
        e = self.engine
        top = self.plan.params.depth + 1
        cts = ct if isinstance(ct, list) else [ct]
        if len(cts) != self.plan.ciphertexts("input"):
            raise PayloadError(f"this plan takes {self.plan.ciphertexts('input')} ciphertext(s) per input, got {len(cts)}")
        for c in cts:
            if e.level(c) != top or not np.isclose(c.scale, self.plan.params.scale, rtol=1e-9):
                raise PayloadError(
                    f"ciphertext at level {e.level(c)} with scale 2^{np.log2(c.scale):.1f}; this plan "
                    f"expects fresh ciphertexts at level {top} and scale 2^{self.plan.params.scale_bits}"
                )
        values = {"input": cts}
        for step in self.plan.steps:
            values[step.name] = self.runner.affine(step, values) if isinstance(step, AffineStep) \
                else self.runner.polynomial(step, values)
        return values[self.plan.output] if isinstance(ct, list) else values[self.plan.output][0]

    def run(self, data: bytes) -> bytes:
        """Evaluate every ciphertext of a client's batch; malformed input raises
        :class:`PayloadError` saying what is wrong."""
        header, blobs = unpack(data, CIPHERTEXTS)
        expected = layout_header(self.plan)
        wrong = {k: header.get(k) for k in expected if header.get(k) != expected[k]}
        if wrong:
            raise PayloadError(f"these ciphertexts were packed for another plan ({wrong} differ from {expected})")
        samples, per = header.get("samples"), header.get("per_ciphertext")
        group = self.plan.ciphertexts("input")  # ciphertexts per input
        if not isinstance(samples, int) or not isinstance(per, int) or per < 1 or -(-samples // per) * group != len(blobs):
            raise PayloadError(f"the batch header announces {samples} samples at {per} per ciphertext "
                               f"({group} ciphertext(s) per input) but holds {len(blobs)} ciphertexts")
        outputs = []
        for start in range(0, len(blobs), group):
            cts = [seal_from_bytes(sa.Ciphertext, blob, self.engine.context, "ciphertext") for blob in blobs[start : start + group]]
            outputs.extend(seal_to_bytes(out) for out in self.evaluate(cts))
        return pack(RESULTS, {**expected, "samples": samples, "per_ciphertext": per}, outputs)
