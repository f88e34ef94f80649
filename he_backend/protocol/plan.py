"""An encrypted-inference plan (:class:`Plan`): parameters, layout, the steps with their levels
and scales, the refresh cuts, and operation counts; its bytes are what the server runs, its
:meth:`~Plan.layout` what the client gets. :func:`he_backend.compile` makes it."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from polyact.data import read_npz
from polyact.ir.graph import INPUT

from ..eval.params import CkksParams
from ..eval.rotations import KeySet
from ..eval.steps import AffineStep, PolyStep, ciphertext_count, poly_values, prepare_steps
from .client import Client
from .plan_layout import PlanLayout, check_gather
from .refresh import (
    Cut,
    MaskPolicy,
    coefficient_leakage,
    leakage_bound,
    mask_bits,
    refresh_bytes,
    refresh_precision_bits,
)
from .serialization import PayloadError, pack, unpack

PLAN_KIND = "plan"


@dataclass
class Plan:
    """An encrypted-inference plan: parameters, layout, steps with their levels and scales,
    and operation counts (see :meth:`report`)."""

    params: CkksParams
    input_shape: tuple[int, ...]
    block: int
    rotations: tuple[int, ...]  # the Galois key steps the client generates
    steps: list[AffineStep | PolyStep]
    output: str
    output_length: int
    packing: str = "sample"
    notes: list[str] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)
    mask: MaskPolicy = field(default_factory=MaskPolicy)
    input_gather: np.ndarray | None = None  # replicated input layout (see PlanLayout)

    # ---- derived ----------------------------------------------------------------------------
    @property
    def input_length(self) -> int:
        return self.layout().input_length

    @property
    def samples_per_ciphertext(self) -> int:
        return self.layout().samples_per_ciphertext

    @property
    def depth(self) -> int:
        """Levels the plan consumes; with refresh points, those of its deepest segment."""
        if self.cuts:
            return self.params.depth + 1 - min(s.level for s in self.steps)
        return self.params.depth + 1 - self.output_level

    @property
    def segments(self) -> list[tuple[int, int]]:
        """``[start, stop)`` step ranges between refresh points."""
        bounds = [0] + [c.position for c in self.cuts] + [len(self.steps)]
        return list(zip(bounds[:-1], bounds[1:]))

    @property
    def output_level(self) -> int:
        by_name = {s.name: s for s in self.steps}
        return by_name[self.output].level if self.output in by_name else self.params.depth + 1

    @property
    def keys(self) -> KeySet:
        """The Galois key steps with the slot count they rotate in."""
        return KeySet(tuple(self.rotations), self.params.slots)

    def ciphertexts(self, value: str) -> int:
        """Ciphertexts per sample of a value (``"input"`` or a step's name)."""
        if value == INPUT:
            return self.layout().input_ciphertexts
        step = next(s for s in self.steps if s.name == value)
        return ciphertext_count(step.positions, self.block)

    def counts(self) -> list[dict[str, Any]]:
        """Per step: kind, length, output level, ciphertexts per sample, and the ciphertext
        products, plaintext products and rotations per evaluation of the step."""
        rows, keys = [], self.keys
        for s in self.steps:
            if isinstance(s, AffineStep):
                rows.append({"step": s.name, "kind": "identity" if s.identity else "affine", "length": s.length,
                             "level": s.level, "ct_ct_mults": 0, "ciphertexts": self.ciphertexts(s.name),
                             "pt_mults": 0 if s.identity else s.diagonal_count,
                             "rotations": s.rotations(keys)})
            else:
                ct = 1 if s.kind == "square" else sum(p.ct_ct_mults for p in s.plans) + (1 if s.product else 0)
                pt = 0 if s.kind == "square" else sum(p.pt_mults for p in s.plans)
                count = self.ciphertexts(s.name)
                rows.append({"step": s.name, "kind": s.kind, "length": s.length, "level": s.level,
                             "ciphertexts": count, "ct_ct_mults": ct * count, "pt_mults": pt * count, "rotations": 0,
                             "degrees": [p.degree for p in s.plans]})
        return rows

    def ciphertext_bytes(self, level: int, seeded: bool = False) -> int:
        """Uncompressed size of a ciphertext at ``level`` (seeded: half, as the client sends)."""
        n = self.params.poly_modulus_degree
        return (1 if seeded else 2) * n * level * 8

    def report(self) -> dict[str, Any]:
        """Depth, parameters, sizes and operation counts, before anything runs."""
        rows = self.counts()
        galois = len(self.rotations)
        top = self.params.depth + 1
        key_bytes = (top + 1) * top * self.params.poly_modulus_degree * 8  # seeded key-switching key
        return {
            "depth": self.depth,
            "params": self.params.to_dict(),
            "packing": self.packing,
            "block": self.block,
            "samples_per_ciphertext": self.samples_per_ciphertext,
            "rotations": list(self.rotations),
            "input_ciphertexts": self.layout().input_ciphertexts,
            "input_ciphertext_bytes": self.ciphertext_bytes(top, seeded=True),
            "output_ciphertext_bytes": self.ciphertext_bytes(self.output_level),
            "public_context_bytes": key_bytes * (1 + galois),
            "totals": {k: sum(r[k] for r in rows) for k in ("ct_ct_mults", "pt_mults", "rotations")},
            "steps": rows,
            "notes": self.notes,
            "refresh": self.refresh_report(),
        }

    def refresh_report(self) -> dict[str, Any]:
        """Refresh rounds per ciphertext: where, how many values, bytes both ways, the mask's
        statistical leakage (per coefficient, and summed over every coefficient the client sees
        masked in all rounds of one inference, union bound: one sample with sample packing, the
        samples sharing a ciphertext with batch packing) and the precision a refresh leaves (see
        :mod:`he_backend.protocol.refresh`)."""
        p, sigma = self.params, self.mask.sigma
        n, top = p.poly_modulus_degree, p.depth + 1
        cuts, coefficients, total = [], 0, 0.0
        for c in self.cuts:
            counts = [self.ciphertexts(name) for name in c.names]
            down, up = refresh_bytes(n, sum(counts), c.mask_level, top)
            coefficients += n * sum(counts)  # every coefficient of every masked ciphertext
            total += sum(n * k * coefficient_leakage(p.scale, b, sigma) for k, b in zip(counts, c.bounds))
            cuts.append({"before": self.steps[c.position].name, "values": list(c.names), "bounds": list(c.bounds),
                         "mask_level": c.mask_level, "mask_bits": max(mask_bits(p.scale, b, sigma) for b in c.bounds),
                         "bytes_down": down, "bytes_up": up,
                         "precision_bits": min(refresh_precision_bits(p, b) for b in c.bounds)})
        bits = -math.log2(total) if total else None
        return {"rounds": len(self.cuts), "sigma": sigma, "margin": self.mask.margin, "exact": True,
                "leakage": leakage_bound(sigma) if self.cuts else None,
                "masked_coefficients": coefficients,
                "statistical_bits": bits,
                "leakage_total": f"2^-{bits:.1f} in statistical distance over the {coefficients} masked integer "
                                 "coefficients of all rounds of one inference (union bound)" if self.cuts else None,
                "precision_bits": min((c["precision_bits"] for c in cuts), default=None),
                "bytes_down": sum(c["bytes_down"] for c in cuts), "bytes_up": sum(c["bytes_up"] for c in cuts),
                "cuts": cuts}

    def table(self) -> str:
        rep = self.report()
        p = self.params
        lines = [f"CKKS N={p.poly_modulus_degree}, primes {list(p.coeff_bits)}, scale 2^{p.scale_bits}; "
                 f"depth {rep['depth']} of {p.depth} levels; block {self.block}, "
                 f"{self.samples_per_ciphertext} sample(s) per ciphertext ({self.packing} packing)",
                 f"{'step':<26} {'kind':<9} {'len':>5} {'level':>5} {'ct*ct':>6} {'pt*ct':>6} {'rot':>5}"]
        for r in rep["steps"]:
            lines.append(f"{r['step'][:26]:<26} {r['kind']:<9} {r['length']:>5} {r['level']:>5} "
                         f"{r['ct_ct_mults']:>6} {r['pt_mults']:>6} {r['rotations']:>5}")
        t = rep["totals"]
        lines.append(f"totals per evaluation: {t['ct_ct_mults']} ct*ct, {t['pt_mults']} pt*ct, {t['rotations']} rotations; "
                     f"input {rep['input_ciphertext_bytes'] / 1e6:.1f} MB, output {rep['output_ciphertext_bytes'] / 1e6:.1f} MB, "
                     f"keys ~{rep['public_context_bytes'] / 1e6:.0f} MB")
        for c in rep["refresh"]["cuts"]:
            lines.append(f"refresh before {c['before']}: {len(c['values'])} value(s) masked at level {c['mask_level']} "
                         f"(sigma {self.mask.sigma}, |v| <= {max(c['bounds']):.3g}), {c['bytes_down'] / 1e6:.1f} MB down, "
                         f"{c['bytes_up'] / 1e6:.1f} MB up, ~{c['precision_bits']:.0f} bits kept")
        if rep["refresh"]["cuts"]:
            lines.append(f"refresh leakage per inference: {rep['refresh']['leakage_total']}")
        return "\n".join(lines)

    def simulate(self, x: np.ndarray) -> np.ndarray:
        """The plan in float64 without encryption (folded weights, folded stages): the
        plaintext twin of the whole network, ``(n, *input_shape) -> (n, output_length)``."""
        return self.trace(x)[self.output]  # a refresh is the identity on plaintexts

    def trace(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every step's value in the float64 twin (``(n, length)`` by step name, and the input)."""
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        values = {INPUT: flat if self.input_gather is None else
                  np.where(self.input_gather >= 0, flat[:, np.maximum(self.input_gather, 0)], 0.0)}
        for s in self.steps:
            if isinstance(s, AffineStep):
                values[s.name] = values[s.sources[0]] if s.identity else \
                    sum((w @ values[src].T).T for src, w in zip(s.sources, s.weights)) + s.bias
                continue
            values[s.name] = poly_values(s, values[s.source])
        return values

    # ---- bytes ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        steps = []
        for i, s in enumerate(self.steps):
            arrays[f"s{i}_pos"] = s.positions
            if isinstance(s, AffineStep):
                for j, w in enumerate(s.weights):
                    arrays[f"s{i}_w{j}_data"], arrays[f"s{i}_w{j}_indices"], arrays[f"s{i}_w{j}_indptr"] = \
                        w.data, w.indices, w.indptr
                arrays[f"s{i}_b"] = s.bias
                steps.append({"type": "affine", "name": s.name, "sources": s.sources, "length": s.length,
                              "shapes": [list(w.shape) for w in s.weights],
                              "level": s.level, "scale": s.scale, "identity": s.identity, "baby": s.baby,
                              "period": s.period})
            else:
                for j, c in enumerate(s.stages):
                    arrays[f"s{i}_c{j}"] = c
                steps.append({"type": "poly", "name": s.name, "source": s.source, "length": s.length,
                              "kind": s.kind, "stages": len(s.stages), "product": s.product,
                              "level": s.level, "scale": s.scale})
        if self.input_gather is not None:
            arrays["input_gather"] = self.input_gather
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        header = {"params": self.params.to_dict(), "input_shape": list(self.input_shape), "block": self.block,
                  "rotations": list(self.rotations), "output": self.output, "output_length": self.output_length,
                  "packing": self.packing, "notes": self.notes, "steps": steps,
                  "cuts": [c.to_dict() for c in self.cuts], "mask": self.mask.to_dict()}
        return pack(PLAN_KIND, header, [buffer.getvalue()])

    @classmethod
    def from_bytes(cls, data: bytes) -> "Plan":
        header, sections = unpack(data, PLAN_KIND)
        try:
            arrays = read_npz(sections[0], "the plan's weights")
            steps: list[AffineStep | PolyStep] = []
            for i, s in enumerate(header["steps"]):
                if s["type"] == "affine":
                    weights = [sp.csr_matrix((arrays[f"s{i}_w{j}_data"], arrays[f"s{i}_w{j}_indices"],
                                              arrays[f"s{i}_w{j}_indptr"]), shape=tuple(shape))
                               for j, shape in enumerate(s["shapes"])]
                    steps.append(AffineStep(s["name"], s["sources"], weights, arrays[f"s{i}_b"], s["length"],
                                            arrays[f"s{i}_pos"], s["level"], s["scale"], s["identity"], int(s["baby"]),
                                            int(s.get("period", 0))))
                else:
                    stages = [arrays[f"s{i}_c{j}"] for j in range(s["stages"])]
                    steps.append(PolyStep(s["name"], s["source"], s["length"], s["kind"], stages, s["product"],
                                          s["level"], s["scale"], positions=arrays[f"s{i}_pos"]))
            if any(s["type"] == "affine" and int(s["baby"]) < 1 for s in header["steps"]):
                raise ValueError("a giant step below 1")
            slots = CkksParams.from_dict(header["params"]).slots
            periods = [s.period for s in steps if isinstance(s, AffineStep)]
            if any(p < 0 or p > slots or p & (p - 1) for p in periods) or (any(periods) and header["packing"] != "sample"):
                raise ValueError(f"a period that is not a power of two up to {slots} (or one without sample packing)")
            plan = cls(CkksParams.from_dict(header["params"]), tuple(header["input_shape"]), header["block"],
                       tuple(int(r) for r in header["rotations"]), steps, header["output"], header["output_length"], header["packing"],
                       header["notes"], [Cut.from_dict(c) for c in header.get("cuts", [])],
                       MaskPolicy.from_dict(header["mask"]) if "mask" in header else MaskPolicy(),
                       np.array(arrays["input_gather"]) if "input_gather" in arrays else None)
            if plan.input_gather is not None:
                check_gather(plan.input_gather, int(np.prod(plan.input_shape)), plan.params.slots)
            plan.prepare()  # a periodic map with slots beyond its periods fails here
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError, RecursionError, MemoryError) as exc:
            raise PayloadError(f"corrupted plan: {exc}") from exc
        return plan

    def prepare(self) -> None:
        layout = self.layout()
        prepare_steps(self.steps, layout.input_slots, self.block, self.params.slots, layout.input_period)
        for s in self.steps:
            if isinstance(s, PolyStep):
                s.prepare(self.params.scale_bits)

    def layout(self) -> PlanLayout:
        """The weight-free part a client needs (see :class:`PlanLayout`)."""
        gather = () if self.input_gather is None else tuple(self.input_gather.tolist())
        return PlanLayout(self.params, self.input_shape, self.block, self.packing, self.output_length,
                          tuple(self.rotations), self.depth, len(self.cuts), gather)

    def client(self, **kwargs: Any) -> Client:
        """A :class:`~he_backend.protocol.client.Client` with keys for this plan."""
        return Client(self.layout(), **kwargs)
