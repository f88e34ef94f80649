"""``tune``: the cheapest PANN whose test accuracy stays within ``max_loss`` points of the
original's, with the trade-off table of every setting tried.

1. **Candidates.** The model is converted once per option (minimax or ``lsq`` weighted by each
   site's observed input density, at degrees 3, 7, 15, 31; composite ReLU at a few
   precisions), every site calibrated on the original network's own inputs (OLA), so any
   per-site mix is assembled by swapping layers (:class:`polyact.train.allocate.Candidates`).
2. **Sensitivity.** For each site and option, only that site is approximated (the others keep
   the exact activation) and the mean ``KL(p_original || p)`` of the outputs on the test inputs
   is measured: ``d_s(o)``.
3. **Search over levels.** :func:`polyact.tuning.search.search_budget` bisects the budget of the
   multiple-choice knapsack ``min sum_s c_s(o_s) s.t. sum_s d_s(o_s) <= B`` (costs: the sites'
   CKKS levels for ``objective="depth"``, their ciphertext products for ``"latency"``) against
   the measured accuracy bar ``original - max_loss``. Every uniform option is measured too, so
   the table shows what a single degree would cost.
4. **Fine-tuning**, only when no conversion meets the bar: the most accurate mix found is
   fine-tuned by :func:`polyact.train.robust.robust_finetune` through its polynomials,
   replacing activations progressively (when epochs allow one per site), with trainable
   coefficients, distillation from the original (``distill``), no weight decay, and the
   best-checkpoint guard.

Every decision and the reported accuracies use the test split, as :mod:`polyact.tradeoff` does.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..approx.composite import PRODUCT_OF
from ..convert.pipeline import convert
from ..convert.report import ConversionReport
from ..convert.storage import copy_metadata
from ..data import Dataset
from ..nn.poly_act import OutOfRangeWarning, polyact_layers
from ..train.allocate import Candidates, layer_ct_ct_mults
from ..train.loop import accuracy, predict
from ..train.robust import robust_finetune
from .search import Option, search_budget

OBJECTIVES = ("latency", "depth")
DEGREES = (3, 7, 15, 31)
METHODS = ("minimax", "lsq")
ALPHAS = (4.0, 6.0)


@dataclass
class TuneRow:
    """One setting tried: its accuracy, total activation depth (CKKS levels of the activations
    on the main path, summed), ciphertext products per ciphertext (the latency estimate) and
    whether it met the bar."""

    setting: str
    accuracy: float
    depth: int
    ct_ct_mults: int
    meets: bool


@dataclass
class TuneResult:
    """The tuned PANN, the per-site choice and the trade-off table."""

    pann: nn.Module
    original_accuracy: float
    accuracy: float
    max_loss: float
    objective: str
    choice: dict[str, str]
    depth: int
    ct_ct_mults: int
    finetuned: bool
    rows: list[TuneRow] = field(default_factory=list)
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    report: ConversionReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cheapest_uniform(self) -> TuneRow | None:
        """The cheapest uniform setting (by the objective) that met the bar."""
        uniform = [r for r in self.rows if r.setting.startswith("uniform") and r.meets]
        return min(uniform, key=self._key) if uniform else None

    def _key(self, row: TuneRow) -> tuple:
        return (row.depth, row.ct_ct_mults) if self.objective == "depth" else (row.ct_ct_mults, row.depth)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("pann", "report", "rows")}
        out["rows"] = [asdict(r) for r in self.rows]
        return out

    def table(self) -> str:
        head = f"{'setting':<34} {'acc %':>6} {'depth':>5} {'ct*ct':>6} {'meets':>5}"
        title = (f"original {self.original_accuracy:.2f}%, bar {self.original_accuracy - self.max_loss:.2f}% "
                 f"(max loss {self.max_loss:g}), objective {self.objective}")
        lines = [title, head, "-" * len(head)]
        lines += [f"{r.setting[:34]:<34} {r.accuracy:>6.2f} {r.depth:>5} {r.ct_ct_mults:>6} {'yes' if r.meets else 'no':>5}"
                  for r in self.rows]
        uniform = self.cheapest_uniform
        lines.append(f"chosen: {self.accuracy:.2f}%, depth {self.depth}, {self.ct_ct_mults} ct*ct"
                     + (" (fine-tuned)" if self.finetuned else "")
                     + (f"; cheapest uniform meeting the bar: {uniform.setting}, depth {uniform.depth}, "
                        f"{uniform.ct_ct_mults} ct*ct" if uniform else "; no uniform setting meets the bar"))
        return "\n".join(lines)


def default_options(targets: Sequence[str], degrees: Sequence[int] = DEGREES, methods: Sequence[str] = METHODS,
                    alphas: Sequence[float] = ALPHAS) -> list[Option]:
    """Each method at each degree; composite precisions when some site is relu-like."""
    if set(methods) - set(METHODS) or not methods or not degrees:
        raise ValueError(f"methods must be among {METHODS} and degrees non-empty, got {list(methods)}, {list(degrees)}")
    options = [Option(m, int(d)) for d in sorted(degrees) for m in methods]
    if any(t in PRODUCT_OF for t in targets):
        options += [Option("composite", alpha=a) for a in alphas]
    return options


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean ``KL(softmax(reference) || softmax(logits))``; ``inf`` if any logit is not finite."""
    if not torch.isfinite(logits).all():
        return math.inf
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True,
                    reduction="batchmean").item()


class _Mixer:
    """Per-option converted PANNs plus the exact skeleton: builds any per-site mix in place."""

    def __init__(self, model: nn.Module, calib: torch.Tensor, options: list[Option], notes: list[str],
                 targets: Sequence[str]) -> None:
        self.relu_like = sorted(set(targets) & set(PRODUCT_OF))
        self.exact, _ = convert(model, calib, degree=3, layers=[])  # same structure, exact activations
        self.options: list[Option] = []
        self.reports: dict[Option, ConversionReport] = {}
        panns = {}
        for option in options:
            try:
                pann, report = convert(model, calib, **self._kwargs(option))
            except ValueError as exc:  # e.g. lsq on a per-channel (PReLU) site
                notes.append(f"{option.label} skipped: {exc}")
                continue
            self.options.append(option)
            panns[option], self.reports[option] = pann, report
        if not self.options:
            raise ValueError("no option converts this model; see the notes")
        self.candidates = Candidates(lambda o: panns[o], self.options)
        self.reference = panns[self.options[0]]  # carries polyact's notes (factory, input shape)
        self.sites = self.candidates.layers
        self.skeleton = self.candidates.skeleton
        self.targets = {name: layer.target for name, layer in polyact_layers(self.skeleton).items()}
        self._exact = {name: self.exact.get_submodule(name) for name in self.sites}

    def _kwargs(self, option: Option) -> dict[str, Any]:
        if option.alpha is None:
            return option.convert_kwargs()
        return {"degree": 15, "overrides": {t: {"alpha": option.alpha, "degree": None} for t in self.relu_like}}

    def available(self, site: str, option: Option) -> bool:
        return option.alpha is None or self.targets[site] in PRODUCT_OF

    def layer(self, site: str, option: Option) -> nn.Module:
        return self.candidates.layer(site, option)

    def build(self, choice: dict[str, Option | None]) -> nn.Module:
        """The skeleton with each site's option (``None``: the exact activation); shared modules."""
        for site in self.sites:
            module = self._exact[site] if choice.get(site) is None else self.layer(site, choice[site])
            _set(self.skeleton, site, module)
        return self.skeleton


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def tune(
    model: nn.Module,
    data: Dataset,
    max_loss: float = 1.0,
    objective: str = "latency",
    *,
    degrees: Sequence[int] = DEGREES,
    methods: Sequence[str] = METHODS,
    alphas: Sequence[float] = ALPHAS,
    finetune: bool | None = None,
    epochs: int = 6,
    lr: float = 1e-3,
    distill: float = 0.5,
    calibration_size: int = 2048,
    seed: int = 0,
) -> TuneResult:
    """The cheapest PANN of ``model`` within ``max_loss`` accuracy points of its test accuracy
    (see the module docstring). ``objective``: ``"latency"`` (ciphertext products) or
    ``"depth"`` (CKKS levels). ``finetune``: ``None`` fine-tunes only when no conversion meets the
    bar, ``False`` never, ``True`` always (the chosen mix). ``epochs``, ``lr``, ``distill`` set
    that fine-tuning. ``degrees``, ``methods`` (``minimax``, ``lsq``) and ``alphas`` (composite
    ReLU precisions) list the options per site."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not max_loss >= 0:
        raise ValueError(f"max_loss must be >= 0 accuracy points, got {max_loss}")
    model = copy.deepcopy(model).cpu().eval()
    x, y = data.x_test.cpu(), data.y_test.cpu()
    reference = predict(model, x)
    original = accuracy(reference, y)
    bar = original - max_loss
    calib = data.calibration(calibration_size).cpu()
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # out-of-range inputs are part of what is measured
        targets = _targets(model, calib)
        mixer = _Mixer(model, calib, default_options(targets, degrees, methods, alphas), notes, targets)
        sites, opts = mixer.sites, mixer.options
        depth = [[mixer.layer(s, o).depth if mixer.available(s, o) else math.inf for o in opts] for s in sites]
        mults = [[layer_ct_ct_mults(mixer.layer(s, o)) if mixer.available(s, o) else math.inf for o in opts]
                 for s in sites]
        cost = [[(d, m) if objective == "depth" else (m, d) for d, m in zip(ds, ms)] for ds, ms in zip(depth, mults)]
        scalar = [[c[0] + 1e-3 * c[1] for c in row] for row in cost]  # ties broken by the other cost
        sensitivity = [[_kl(reference, predict(mixer.build({s: o}), x)) if mixer.available(s, o) else math.inf
                        for o in opts] for s in sites]
        rows: list[TuneRow] = []
        measured: dict[tuple[int, ...], float] = {}

        def measure(choice: list[int], label: str) -> bool:
            key = tuple(choice)
            if key not in measured:
                measured[key] = accuracy(predict(mixer.build({s: opts[o] for s, o in zip(sites, choice)}), x), y)
                rows.append(TuneRow(label, measured[key], int(sum(depth[i][o] for i, o in enumerate(choice))),
                                    int(sum(mults[i][o] for i, o in enumerate(choice))), measured[key] >= bar))
            return measured[key] >= bar

        for k, option in enumerate(opts):
            measure([k if mixer.available(s, option) else _fallback(mixer, s, opts) for s in sites],
                    f"uniform {option.label}")
        tried = search_budget(scalar, sensitivity, lambda c: measure(c, f"per-site #{len(rows)}"))
    met = [tuple(c) for _, c, ok in tried if ok] + [k for k, acc in measured.items() if acc >= bar]
    key = (lambda c: _total(cost, c))
    best = min(met, key=key) if met else max(measured, key=lambda k: measured[k])
    choice = {s: opts[o] for s, o in zip(sites, best)}
    result = _result(mixer, choice, measured[best], original, max_loss, objective, rows, notes, sites, opts,
                     sensitivity, depth, mults, best)
    if finetune or (finetune is None and not met):
        result = _finetune(model, data, result, choice, calibration_size, epochs, lr, distill, seed, depth, mults,
                           sites, opts, best)
    return result


def _targets(model: nn.Module, calib: torch.Tensor) -> list[str]:
    from ..convert.call_sites import prepare_structure

    return [s.target for s in prepare_structure(model, example=calib[:1]).sites]


def _fallback(mixer: _Mixer, site: str, opts: list[Option]) -> int:
    """For a site a uniform option does not apply to (composite on a smooth activation): the
    most accurate polynomial option (the highest degree, minimax)."""
    ok = [k for k, o in enumerate(opts) if mixer.available(site, o)]
    return max(ok, key=lambda k: (opts[k].degree or 0, opts[k].method == "minimax"))


def _total(cost: list[list[tuple]], choice: Sequence[int]) -> tuple:
    return tuple(sum(cost[i][o][j] for i, o in enumerate(choice)) for j in range(2))


def _result(mixer, choice, acc, original, max_loss, objective, rows, notes, sites, opts, sensitivity, depth, mults,
            best) -> TuneResult:
    pann = copy_metadata(mixer.reference, copy.deepcopy(mixer.build(choice))).eval()
    return TuneResult(
        pann=pann, original_accuracy=original, accuracy=acc, max_loss=max_loss, objective=objective,
        choice={s: o.label for s, o in choice.items()},
        depth=int(sum(depth[i][o] for i, o in enumerate(best))), ct_ct_mults=int(sum(mults[i][o] for i, o in enumerate(best))),
        finetuned=False, rows=rows,
        sensitivity={s: {o.label: sensitivity[i][k] for k, o in enumerate(opts)} for i, s in enumerate(sites)},
        notes=notes)


def _finetune(model, data, result, choice, calibration_size, epochs, lr, distill, seed, depth, mults, sites, opts,
              best) -> TuneResult:
    """Fine-tune the chosen mix through its polynomials (see the module docstring, step 4)."""
    first = next(iter(choice.values()))
    overrides = {s: {"method": o.method if o.alpha is None else "minimax", **o.convert_kwargs()} for s, o in choice.items()}
    base = first.convert_kwargs() if first.alpha is None else {"degree": 15}
    tuned = robust_finetune(model, data, **base, overrides=overrides, epochs=epochs, lr=lr, distill=distill,
                            progressive="layers" if len(sites) <= epochs else None, trainable_coefficients=True,
                            weight_decay=0.0, guard=True, calibration_size=calibration_size, seed=seed,
                            report_depth=False, mixup=0.0)
    acc = accuracy(predict(tuned.pann.cpu(), data.x_test.cpu()), data.y_test.cpu())
    layers = polyact_layers(tuned.pann)
    row = TuneRow(f"fine-tuned ({epochs} epochs, distill {distill:g})", acc,
                  int(sum(m.depth for m in layers.values())), int(sum(layer_ct_ct_mults(m) for m in layers.values())),
                  acc >= result.original_accuracy - result.max_loss)
    result.rows.append(row)
    if acc > result.accuracy:  # the guard never returns worse than the start; keep the better
        result.pann, result.accuracy, result.finetuned = tuned.pann.cpu().eval(), acc, True
        result.depth, result.ct_ct_mults = row.depth, row.ct_ct_mults
    return result
