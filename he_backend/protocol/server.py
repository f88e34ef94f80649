"""The server: runs a plan on ciphertexts with public evaluation keys only.

Plans with refresh points run in rounds (:mod:`he_backend.protocol.refresh`): :meth:`Server.start` takes
the client's ciphertexts and returns either the results or a refresh request; the client's
:meth:`~he_backend.protocol.client.Client.refresh` answers it and :meth:`Server.resume` continues.
Between rounds the server keeps only ciphertexts and its own random masks.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from multiprocessing.connection import Connection

import numpy as np
import tenseal.sealapi as sa

from polyact.ir.graph import INPUT

from ..eval.ckks import Engine
from ..eval.rotations import GIANT_RUNS
from ..eval.runner import PlaintextCache, Runner, Values
from ..eval.steps import AffineStep
from .client import CIPHERTEXTS, KEY_FIELD, RESULTS, layout_header
from .keys import install_keys, key_fingerprint, load_public_context
from .plan import Plan
from .refresh import REPLY_KIND, REQUEST_KIND, check_count, flood, mask, new_token, unmask
from .serialization import PayloadError, pack, seal_from_bytes, seal_to_bytes, unpack
from .workers import READY, Partner
from .workers import REPLY_KIND as PARTNER_REPLY
from .workers import REQUEST_KIND as PARTNER_REQUEST

MAX_PENDING = 8  # inferences a server keeps waiting for refresh replies (the oldest is dropped)


class RefreshRequired(PayloadError):
    """A plan with refresh rounds was run with :meth:`Server.run` instead of rounds."""


@dataclass
class _Job:
    """An inference between rounds: per input (ciphertext group) its values (lists of
    ciphertexts; empty while a refresh is in flight) and the real parts of that refresh's masks
    (one per masked ciphertext, in request order); the client's batch header."""

    header: dict
    values: list[Values]
    cut: int
    masks: list[list[np.ndarray]]


class Server:
    """Holds a :class:`Plan` and a public context (refused if it contains a secret key);
    :meth:`run` maps the client's ciphertext bytes to result bytes. Servers of one plan may
    share a :class:`~he_backend.eval.runner.PlaintextCache` (encoded weights). ``workers=2`` shares
    each request with a partner process (:mod:`he_backend.protocol.workers`: half of the inputs of a
    request of several, else half of every affine map): two cores, the same bytes out;
    :meth:`close` stops it."""

    def __init__(self, plan: Plan, public_context: bytes, cache: PlaintextCache | None = None, *,
                 flood_std: float = 0.0, workers: int = 1) -> None:
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
        install_keys(self.engine, public)
        if flood_std < 0:
            raise ValueError(f"flood_std must be >= 0, got {flood_std}")
        if workers not in (1, 2):
            raise ValueError(f"workers must be 1 or 2 (processes per request), got {workers!r}")
        partner = Partner(plan.to_bytes(), public_context, serve_partner) if workers == 2 else None
        self.runner = Runner(self.engine, plan.block, cache, partner)
        self._solo = Runner(self.engine, plan.block, self.runner.cache)  # while the partner runs other inputs
        self.flood_std = flood_std
        self._jobs: OrderedDict[str, _Job] = OrderedDict()

    def close(self) -> None:
        """Stop the partner process, if any (a server without one has nothing to stop)."""
        if self.runner.partner is not None:
            self.runner.partner.close()

    @classmethod
    def from_bytes(cls, plan_bytes: bytes, public_context: bytes, **kwargs) -> "Server":
        return cls(Plan.from_bytes(plan_bytes), public_context, **kwargs)

    def evaluate(self, ct: sa.Ciphertext | list[sa.Ciphertext]) -> sa.Ciphertext | list[sa.Ciphertext]:
        """The plan applied to one input (single-round plans): a ciphertext, or the list of
        ciphertexts of a sample that spans several (then a list comes back)."""
        cts = ct if isinstance(ct, list) else [ct]
        self._check_input(cts)
        if self.plan.cuts:
            raise RefreshRequired(self._rounds_message())
        out = self._segment({INPUT: cts}, 0, len(self.plan.steps))[self.plan.output]
        return out if isinstance(ct, list) else out[0]

    def _check_input(self, cts: list[sa.Ciphertext]) -> None:
        expected = self.plan.ciphertexts(INPUT)
        if len(cts) != expected:
            raise PayloadError(f"this plan takes {expected} ciphertext(s) per input, got {len(cts)}")
        for c in cts:
            self._check_fresh(c)

    def _check_fresh(self, ct: sa.Ciphertext) -> None:
        e = self.engine
        top = self.plan.params.depth + 1
        if e.level(ct) != top or not np.isclose(ct.scale, self.plan.params.scale, rtol=1e-9):
            raise PayloadError(
                f"ciphertext at level {e.level(ct)} with scale 2^{np.log2(ct.scale):.1f}; this plan "
                f"expects fresh ciphertexts at level {top} and scale 2^{self.plan.params.scale_bits}"
            )

    def _segment(self, values: Values, start: int, stop: int, runner: Runner | None = None) -> Values:
        runner = runner or self.runner
        for step in self.plan.steps[start:stop]:
            values[step.name] = runner.affine(step, values) if isinstance(step, AffineStep) \
                else runner.polynomial(step, values)
        return values

    def segment(self, values: Values, start: int, stop: int, runner: Runner | None = None) -> Values:
        """Steps ``start:stop`` on one input's live ``values``; only what is read after ``stop``
        comes back (the output, or the live values of the refresh there)."""
        values = self._segment(dict(values), start, stop, runner)  # its intermediates go when this returns
        after = [self.plan.output] if stop == len(self.plan.steps) else \
            next(c.names for c in self.plan.cuts if c.position == stop)
        return {name: values[name] for name in after}

    def _segments(self, inputs: list[Values], start: int, stop: int,
                  sent: list[list[bytes]] | None = None) -> list[Values]:
        """:meth:`segment` of every input; with a partner and several inputs, the partner runs
        the second half of them meanwhile (given the client's bytes of each input, ``sent``,
        those are passed on as they are)."""
        partner = self.runner.partner
        if partner is None or len(inputs) < 2:
            return [self.segment(v, start, stop) for v in inputs]
        half = -(-len(inputs) // 2)
        partner.start_segment(start, stop, [{INPUT: blobs} for blobs in sent[half:]] if sent else
                              [{name: [seal_to_bytes(ct) for ct in cts] for name, cts in v.items()} for v in inputs[half:]])
        mine = [self.segment(v, start, stop, self._solo) for v in inputs[:half]]
        return mine + partner.segment_result(self.engine.context)

    def _rounds_message(self) -> str:
        return (f"this plan needs {len(self.plan.cuts)} refresh round(s) with the client; drive them with "
                "he_backend.run_interactive(client, server, payload) (or server.start / client.refresh / "
                "server.resume)")

    def run(self, data: bytes) -> bytes:
        """Evaluate every ciphertext of a client's batch (single-round plans); malformed input
        raises :class:`PayloadError` saying what is wrong."""
        if self.plan.cuts:
            raise RefreshRequired(self._rounds_message())
        return self.start(data)

    def start(self, data: bytes) -> bytes:
        """Begin an inference on a client's batch: the result bytes, or (plans with refresh
        points) the first refresh request for :meth:`~he_backend.protocol.client.Client.refresh`."""
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
        group = self.plan.ciphertexts(INPUT)  # ciphertexts per input
        most = self.plan.samples_per_ciphertext
        if type(per) is not int or not 1 <= per <= most:
            raise PayloadError(f"the batch header field 'per_ciphertext' must be an integer from 1 to {most} "
                               f"(samples this plan packs per ciphertext), got {str(per)[:40]!r}")
        if type(samples) is not int or samples < 1 or -(-samples // per) * group != len(blobs):
            raise PayloadError(f"the batch header announces {samples} samples at {per} per ciphertext "
                               f"({group} ciphertext(s) per input) but holds {len(blobs)} ciphertexts")
        values, sent = [], []
        for start in range(0, len(blobs), group):
            sent.append(blobs[start : start + group])
            cts = [seal_from_bytes(sa.Ciphertext, blob, self.engine.context, "ciphertext") for blob in sent[-1]]
            self._check_input(cts)
            values.append({INPUT: cts})
        return self._advance(_Job({**expected, "samples": samples, "per_ciphertext": per, KEY_FIELD: self.fingerprint},
                                   values, 0, []), sent)

    def _advance(self, job: _Job, sent: list[list[bytes]] | None = None) -> bytes:
        """Run the job's current segment on every input (only their results or live values are
        kept; ``sent``: the client's bytes of the inputs, at the first segment); answer with the
        results or the next refresh request."""
        start, stop = self.plan.segments[job.cut]
        last = job.cut == len(self.plan.cuts)
        sections, job.masks = [], []
        outputs = self._segments(job.values, start, stop, sent)
        for i, v in enumerate(outputs):
            job.values[i] = {}  # the refreshed copies replace everything at the next round
            if last:
                sections += [seal_to_bytes(flood(self.engine, ct, self.flood_std) if self.flood_std else ct)
                             for ct in v[self.plan.output]]
                continue
            cut = self.plan.cuts[job.cut]
            pairs = [mask(self.engine, ct, bound, self.plan.mask.sigma, cut.mask_level)
                     for name, bound in zip(cut.names, cut.bounds) for ct in v[name]]
            sections += [seal_to_bytes(ct) for ct, _ in pairs]
            job.masks.append([real for _, real in pairs])
        if last:
            return pack(RESULTS, job.header, sections)
        token = new_token()
        self._jobs[token] = job
        while len(self._jobs) > MAX_PENDING:
            self._jobs.popitem(last=False)
        return pack(REQUEST_KIND, {**layout_header(self.plan), KEY_FIELD: self.fingerprint, "round": token, "refresh": job.cut,
                                   "count": len(sections), "level": self.plan.cuts[job.cut].mask_level}, sections)

    def resume(self, data: bytes) -> bytes:
        """Continue an inference with the client's refresh reply: results or the next request."""
        header, blobs = unpack(data, REPLY_KIND)
        job = self._jobs.get(header.get("round")) if isinstance(header.get("round"), str) else None
        if job is None:
            raise PayloadError("this refresh reply answers no round in progress (unknown, expired or already "
                               "answered); start the inference again")
        if header.get(KEY_FIELD) != self.fingerprint:
            raise PayloadError(f"this refresh reply was encrypted for the keys {header.get(KEY_FIELD)!r}, not this "
                               f"session's ({self.fingerprint}): answer a round with the client that started it")
        if header.get("refresh") != job.cut:
            raise PayloadError(f"this reply answers refresh {header.get('refresh')}, the round is at refresh {job.cut}")
        cut = self.plan.cuts[job.cut]
        per_input = sum(self.plan.ciphertexts(name) for name in cut.names)  # every ciphertext of every live value
        check_count(len(blobs), len(job.values) * per_input, "the refresh reply")
        fresh = [seal_from_bytes(sa.Ciphertext, blob, self.engine.context, "refreshed ciphertext") for blob in blobs]
        for ct in fresh:
            self._check_fresh(ct)
        del self._jobs[header["round"]]
        for i, (v, masks) in enumerate(zip(job.values, job.masks)):
            pairs = iter(zip(fresh[i * per_input : (i + 1) * per_input], masks))
            for name in cut.names:
                v[name] = [unmask(self.engine, ct, real) for ct, real in islice(pairs, self.plan.ciphertexts(name))]
        job.masks = []
        job.cut += 1
        self._alias(job)
        return self._advance(job)

    def _alias(self, job: _Job) -> None:
        """Names that alias a refreshed ciphertext (identity steps) point to its new copy."""
        start = self.plan.segments[job.cut][0]
        for s in self.plan.steps[:start]:
            if isinstance(s, AffineStep) and s.identity:
                for v in job.values:
                    if s.sources[0] in v:
                        v[s.name] = v[s.sources[0]]


def serve_partner(conn: Connection) -> None:
    """The partner's loop: load the plan and keys, then answer one request per affine step."""
    try:
        server = Server.from_bytes(conn.recv_bytes(), conn.recv_bytes())
    except Exception as exc:  # reported to the parent, which raises it
        conn.send_bytes(f"{type(exc).__name__}: {exc}".encode())
        return
    steps = {s.name: s for s in server.plan.steps if isinstance(s, AffineStep)}
    conn.send_bytes(READY)
    while True:
        try:
            header, sections = unpack(conn.recv_bytes(), PARTNER_REQUEST)
        except EOFError:
            return
        try:
            blobs = iter(sections)

            def read(counts: list) -> Values:
                return {name: [seal_from_bytes(sa.Ciphertext, next(blobs), server.engine.context, "a ciphertext")
                               for _ in range(count)] for name, count in counts}

            if "segment" in header:
                start, stop = header["segment"]
                outputs = [server.segment(read(counts), start, stop) for counts in header["inputs"]]
                reply = pack(PARTNER_REPLY, {"outputs": [[[name, len(cts)] for name, cts in v.items()] for v in outputs]},
                             [seal_to_bytes(ct) for v in outputs for cts in v.values() for ct in cts])
            else:
                sums = server.runner.partial(steps[header["step"]], read(header["sources"]), range(1, GIANT_RUNS))
                reply = pack(PARTNER_REPLY, {"outputs": [[i, len(cts)] for i, cts in sums.items()]},
                             [seal_to_bytes(ct) for cts in sums.values() for ct in cts])
        except Exception as exc:  # reported to the parent, which raises it
            reply = pack(PARTNER_REPLY, {"error": f"{type(exc).__name__}: {exc}"}, [])
        conn.send_bytes(reply)
