"""Robust training: PANNs that keep their accuracy with cheap, low-precision polynomials.

Why. In a PANN every activation carries an approximation error, and the rest of the network
sees it as a perturbation (Zhang, Fan, Au, Yiu: "Neural Networks with (Low-Precision)
Polynomial Approximations: New Insights and Techniques for Accuracy Improvement", 2024). Two
findings drive the techniques here: a network is susceptible to such perturbations (for ReLU
mostly through the error on negative inputs, where the exact activation is 0 and the error
leaks into every later layer), and weight decay lowers a PANN's accuracy. A network trained to
tolerate the error keeps its accuracy with a lower-precision, cheaper polynomial (lower degree,
lower CKKS depth).

Techniques (each switchable in :class:`RobustConfig`):

``perturbation="polynomial"``
    Train through the target polynomials themselves: the PANN at the target precision is the
    model being trained, so the network learns the exact error it will meet.
``perturbation="noise"``
    Keep the original activations and add ``2^-noise_bits B xi``, ``xi ~ U[-1, 1]``, where
    ``B = max(|a|, |b|)`` of the layer's interval; for ReLU-like activations only on negative
    inputs, as the real error's harm is there. Cheap, and one trained model serves every
    precision finer than the noise.
``perturbation="worst_case"``
    The paper's bounded worst-case perturbation: keep the original activations and add, in
    training, ``e(x) sign(dL/dy)`` to each activation's output ``y`` (one sign-gradient step,
    as in FGSM, taken from a first forward/backward pass), where ``e(x)`` is the error band of
    the target approximation at precision ``2^-band_bits``: ``2^-band_bits B`` for a minimax fit
    (``B = max(|a|, |b|)`` of the layer's interval), and for composite ReLU (``alpha=``)
    ``|x|`` inside the sign gap ``|x| < 2^-band_bits B`` and ``2^-band_bits |x| / 2`` outside
    it. The network learns to tolerate every error inside the band, so one trained model
    serves every precision at least as fine (``RobustResult.model``).
``range_penalty``
    ``lambda mean(((x - b)_+ + (a - x)_+)^2 / h^2)`` over each activation's inputs (``h`` the
    interval half-width): zero inside ``[a, b]``, quadratic outside, so encrypted inputs stay
    where the polynomial is accurate.
``weight_decay=0`` and ``mixup``
    No weight decay by default (it shrinks the signal relative to the fixed approximation
    error); mixup regularises instead.
``progressive="layers"`` or ``"degree"``
    Replace one activation at a time, or lower the precision step by step, re-calibrating and
    fine-tuning briefly between steps.
``trainable_coefficients``
    Polynomial coefficients become parameters, initialised from the fit; intervals stay fixed
    so degree and depth do not change.
``distill`` (with a teacher: the original model by default)
    The loss becomes ``(1 - distill) CE + distill T^2 KL(teacher || student)`` at temperature
    ``T`` (``temperature``): the PANN learns the original's outputs, not only the labels.
``overrides``
    Per-layer precisions, as in :func:`polyact.convert` (used by :func:`polyact.tune`).
``guard=True``
    The best-checkpoint guard (:class:`polyact.train.loop.BestCheckpoint`): the test accuracy
    of the PANN at the target precision is measured before training and after every epoch, the
    best weights are kept, and the result is never worse than the start at that precision
    (``RobustResult.start_accuracy`` / ``final_accuracy``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from ..approx.composite import PRODUCT_OF
from ..convert.calibration import choose_interval
from ..convert.call_sites import prepare_structure
from ..convert.pipeline import calibrate, convert
from ..convert.report import ConversionReport
from ..convert.sites import install
from ..convert.storage import copy_metadata
from ..data import Dataset
from ..nn.poly_act import polyact_layers
from ..nn.sites import ActivationSlot
from .loop import BestCheckpoint, evaluate, train_classifier

PERTURBATIONS = ("polynomial", "noise", "worst_case", None)
PROGRESSIVE = ("layers", "degree", None)
NEGATIVE_SIDE = ("relu", "leaky_relu", "elu", "selu", "hardswish")


@dataclass(frozen=True)
class RobustConfig:
    """Target precision (as in :func:`polyact.convert`), techniques, and optimisation."""

    method: str = "minimax"
    degree: int | None = None
    bits: float | None = None
    alpha: float | None = None
    tolerance: float | None = None
    margin: float = 0.1
    per_channel: bool = False
    calibration_size: int = 2048
    report_depth: bool = True
    perturbation: str | None = "polynomial"
    noise_bits: float | None = None
    band_bits: float | None = None
    range_penalty: float = 1.0
    weight_decay: float = 0.0
    mixup: float = 0.2
    progressive: str | None = None
    trainable_coefficients: bool = False
    guard: bool = True
    overrides: dict[str, dict[str, Any]] | None = None
    distill: float = 0.0
    temperature: float = 2.0
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0

    def precision(self) -> dict[str, Any]:
        """The keyword arguments of :func:`polyact.convert` fixing the final PANN."""
        keys = ("method", "degree", "bits", "alpha", "tolerance", "margin", "per_channel")
        out = {k: getattr(self, k) for k in keys}
        return {**out, "overrides": self.overrides} if self.overrides else out


@dataclass
class Stage:
    """One training stage: what was trained and the test accuracy after it."""

    label: str
    epochs: int
    test_accuracy: float


@dataclass
class RobustResult:
    """The robust PANN, its conversion report, and the stages that produced it."""

    pann: nn.Module
    report: ConversionReport | None
    stages: list[Stage] = field(default_factory=list)
    model: nn.Module | None = None  # the fine-tuned weights with the original activations
    start_accuracy: float | None = None  # the start's PANN at the target precision (guard on)
    final_accuracy: float | None = None  # the returned PANN, same measure


def range_penalty(x: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """``mean(((x - high)_+ + (low - x)_+)^2) / h^2`` with ``h = (high - low) / 2``."""
    excess = torch.relu(x - high) + torch.relu(low - x)
    half = (torch.as_tensor(high) - torch.as_tensor(low)) / 2.0
    return (excess / half).pow(2).mean()


class RangePenalty:
    """Collects :func:`range_penalty` of every watched module's input during a forward pass;
    calling it returns ``weight`` times their mean and starts over."""

    def __init__(self, intervals: dict[nn.Module, Any], weight: float) -> None:
        self.weight = weight
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_pre_hook(self._hook(bounds)) for m, bounds in intervals.items()]

    def _hook(self, bounds: Any):
        def hook(module: nn.Module, args: tuple) -> None:
            if module.training and not getattr(module, "probing", False):
                low, high = bounds(args[0]) if callable(bounds) else bounds
                self.terms.append(range_penalty(args[0], low, high))
        return hook

    def __call__(self) -> torch.Tensor:
        total = torch.stack(self.terms).mean() if self.terms else torch.zeros(())
        self.terms = []
        return self.weight * total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class PerturbedActivation(nn.Module):
    """``f(x) + magnitude * xi`` with ``xi ~ U[-1, 1]`` in training mode (only where ``x < 0``
    if ``negative_only``); exactly ``f(x)`` in eval mode."""

    def __init__(self, activation: nn.Module, magnitude: float, negative_only: bool) -> None:
        super().__init__()
        self.activation = activation
        self.magnitude = float(magnitude)
        self.negative_only = negative_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activation(x)
        if not self.training or self.magnitude == 0:
            return y
        noise = self.magnitude * (2.0 * torch.rand_like(y) - 1.0)
        if self.negative_only:
            noise = noise * (x < 0)
        return y + noise


def band_envelope(x: torch.Tensor, bits: float, bound: float, composite: bool) -> torch.Tensor:
    """The error band ``e(x)`` of an approximation at precision ``2^-bits`` on an interval with
    ``B = bound``: ``2^-bits B`` (minimax), or for composite ReLU ``|x|`` where ``|x| < 2^-bits B``
    (the sign gap) and ``2^-bits |x| / 2`` elsewhere."""
    tol = 2.0 ** (-bits)
    if not composite:
        return torch.full_like(x, tol * bound)
    magnitude = x.abs()
    return torch.where(magnitude < tol * bound, magnitude, 0.5 * tol * magnitude)


class BandPerturbedActivation(nn.Module):
    """``f(x) + e(x) d`` in training, with ``d`` the sign of the loss gradient w.r.t. the output
    (set by :class:`WorstCasePerturbation`); exactly ``f(x)`` in eval mode or before a
    direction is set. While ``probing`` it records its outputs for that gradient."""

    def __init__(self, activation: nn.Module, bits: float, bound: float, composite: bool) -> None:
        super().__init__()
        self.activation = activation
        self.bits, self.bound, self.composite = float(bits), float(bound), composite
        self.probing = False
        self.outputs: list[torch.Tensor] = []
        self.directions: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activation(x)
        if not self.training:
            return y
        if self.probing:
            self.outputs.append(y)
            return y
        if not self.directions:
            return y
        return y + band_envelope(x, self.bits, self.bound, self.composite) * self.directions.pop(0)


class WorstCasePerturbation:
    """The ``perturb`` step of :func:`polyact.train.loop.train_classifier`: run the batch's loss
    once with clean activations, then give every :class:`BandPerturbedActivation` the sign of
    ``dL/dy`` (per call, in call order), so the training pass maximises the first-order loss
    over the band.

    The probing pass runs in training mode (batch statistics, as the training pass sees them),
    but it is a measurement: the running statistics of ``model``'s batch norms are left as they
    were (otherwise every step would update them twice, with momentum ``1 - (1 - m)^2``)."""

    def __init__(self, layers: list[BandPerturbedActivation], model: nn.Module | None = None) -> None:
        self.layers = layers
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if model else []

    def __call__(self, loss_of) -> None:
        for layer in self.layers:
            layer.probing, layer.outputs, layer.directions = True, [], []
        saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in self.norms]
        try:
            loss = loss_of()
            outputs = [y for layer in self.layers for y in layer.outputs]
            grads = torch.autograd.grad(loss, outputs, allow_unused=True)
        finally:  # after the backward pass: batch norm saves its buffers for it
            for layer in self.layers:
                layer.probing = False
            with torch.no_grad():
                for m, buffers in zip(self.norms, saved):
                    for k, v in buffers.items():
                        getattr(m, k).copy_(v)
        it = iter(grads)
        for layer in self.layers:
            layer.directions = [torch.zeros_like(y) if g is None else g.sign() for y, g in
                                zip(layer.outputs, [next(it) for _ in layer.outputs])]
            layer.outputs = []


def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter and buffer the two models share (by name and shape)."""
    mine = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in mine and mine[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)


def _bits(cfg: RobustConfig, first: float | None, name: str) -> float:
    for value in (first, cfg.bits, cfg.alpha):
        if value is not None:
            return float(value)
    raise ValueError(f"perturbation={cfg.perturbation!r} needs {name}= (or bits= / alpha= to derive it)")


def _perturbed(master: nn.Module, data: Dataset, cfg: RobustConfig) -> tuple[nn.Module, dict[nn.Module, Any]]:
    """``master``'s structure with perturbed activations, and each activation's interval."""
    model, intervals, _, _ = _perturbed_with_step(master, data, cfg)
    return model, intervals


def _perturbed_with_step(master: nn.Module, data: Dataset, cfg: RobustConfig) -> tuple[nn.Module, dict[nn.Module, Any], str, Any]:
    """``master``'s structure with perturbed activations (``cfg.perturbation``: ``"noise"`` or
    ``"worst_case"``), each activation's interval, a label, and the trainer's ``perturb`` step."""
    structure = prepare_structure(master.cpu())
    observers = calibrate(structure, data.calibration(cfg.calibration_size).cpu())
    noise = cfg.perturbation == "noise"
    bits = _bits(cfg, cfg.noise_bits if noise else cfg.band_bits, "noise_bits" if noise else "band_bits")
    intervals: dict[nn.Module, Any] = {}
    wrappers: dict[str, nn.Module] = {}
    for site in structure.sites:
        stats = observers[site.name].stats()
        composite = cfg.alpha is not None and site.target in PRODUCT_OF
        low, high = choose_interval(stats.min, stats.max, cfg.margin, symmetric=composite)
        scale = max(abs(low), abs(high))
        if noise:
            wrappers[site.name] = PerturbedActivation(site.activation, 2.0**-bits * scale, site.target in NEGATIVE_SIDE)
        else:
            wrappers[site.name] = BandPerturbedActivation(site.activation, bits, scale, composite)
        intervals[wrappers[site.name]] = (low, high)
    install(structure, lambda site: wrappers[site.name])
    structure.model.to(data.x_train.device)
    if noise:
        return structure.model, intervals, f"noise 2^-{bits:g} B", None
    return structure.model, intervals, f"worst case in the 2^-{bits:g} band", WorstCasePerturbation(list(wrappers.values()), structure.model)


def _plain_intervals(master: nn.Module, data: Dataset, cfg: RobustConfig) -> tuple[nn.Module, dict[nn.Module, Any]]:
    """``master``'s structure with its own activations, and each activation's interval."""
    structure = prepare_structure(master.cpu())
    observers = calibrate(structure, data.calibration(cfg.calibration_size).cpu())
    intervals = {}
    for name, module in structure.model.named_modules():
        if isinstance(module, ActivationSlot):
            stats = observers[name].stats()
            module.observer = nn.Identity()
            intervals[module] = choose_interval(stats.min, stats.max, cfg.margin)
    return structure.model.to(data.x_train.device), intervals


def _convert(model: nn.Module, data: Dataset, cfg: RobustConfig, **precision: Any) -> tuple[nn.Module, Any]:
    """:func:`polyact.convert` on CPU with ``cfg``'s calibration subset (and depth only if
    ``cfg.report_depth``: lowering is costly for large inputs)."""
    calib = data.calibration(cfg.calibration_size).cpu()
    return convert(model.cpu(), calib, report_depth=cfg.report_depth, **precision)


def _schedule(cfg: RobustConfig, sites: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The stages: (label, convert keyword arguments)."""
    target = cfg.precision()
    if cfg.progressive == "layers":
        return [(f"layers {sites[: k + 1]}", {**target, "layers": sites[: k + 1]}) for k in range(len(sites))]
    if cfg.progressive == "degree":
        if cfg.degree is not None:
            degrees = [cfg.degree]
            while degrees[-1] < 15:
                degrees.append(2 * degrees[-1] + 1)
            steps = [{"degree": d} for d in reversed(degrees)]
        else:
            key = next(k for k in ("bits", "alpha", "tolerance") if target[k] is not None)
            factor = (lambda v, i: v * 2.0 ** (-i)) if key == "tolerance" else (lambda v, i: v + i)
            steps = [{key: factor(target[key], i)} for i in (3, 2, 1, 0)]
        return [(f"precision {step}", {**target, **step}) for step in steps]
    return [(f"precision { {k: v for k, v in target.items() if v is not None} }", target)]


def _train_stage(model: nn.Module, intervals: dict[nn.Module, Any], data: Dataset, cfg: RobustConfig, epochs: int,
                 perturb: Any = None, guard: BestCheckpoint | None = None, teacher: nn.Module | None = None) -> None:
    """Train one stage; with a ``guard``, end on its best weights (the start's if none beat it)."""
    penalty = RangePenalty(intervals, cfg.range_penalty) if cfg.range_penalty > 0 else None
    try:
        train_classifier(model, data, epochs=epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         batch_size=cfg.batch_size, mixup=cfg.mixup, extra_loss=penalty, perturb=perturb,
                         seed=cfg.seed, on_epoch=guard, teacher=teacher, distill=cfg.distill if teacher else 0.0,
                         temperature=cfg.temperature)
    finally:
        if penalty is not None:
            penalty.remove()
    if guard is not None:
        if len(guard.scores) == 1:  # a trainer that reported no epoch: score where it ended
            guard(model, epochs)
        guard.restore(model)


def _pann_accuracy(model: nn.Module, data: Dataset, cfg: RobustConfig) -> float:
    """Test accuracy of ``model``'s PANN at the target precision (converted on the CPU)."""
    pann, _ = _convert(copy.deepcopy(model), data, cfg, **cfg.precision())
    return evaluate(pann.to(data.x_test.device), data.x_test, data.y_test)


def _converting_guard(trained: nn.Module, master: nn.Module, data: Dataset, cfg: RobustConfig) -> BestCheckpoint:
    """A guard for training with the original activations: it scores the PANN that ``trained``'s
    weights (copied into ``master``'s structure) give at the target precision."""
    probe = copy.deepcopy(master)

    def score(model: nn.Module) -> float:
        _copy_weights(model, probe)
        return _pann_accuracy(probe, data, cfg)

    return BestCheckpoint(trained, score)


def _polyact_intervals(pann: nn.Module) -> dict[nn.Module, Any]:
    return {m: m.bounds for m in polyact_layers(pann).values()}


def _train_pann(pann: nn.Module, data: Dataset, cfg: RobustConfig, epochs: int, guarded: bool = False,
                teacher: nn.Module | None = None) -> None:
    """Train a PANN through its polynomials, inputs clipped to the intervals while training;
    ``guarded``: keep the epoch (or the start) with the best test accuracy."""
    layers = polyact_layers(pann).values()
    guard = BestCheckpoint(pann, lambda m: evaluate(m, data.x_test, data.y_test)) if guarded else None
    for layer in layers:
        layer.clamp_in_training = True
    try:
        _train_stage(pann, _polyact_intervals(pann), data, cfg, epochs, guard=guard, teacher=teacher)
    finally:
        for layer in layers:
            layer.clamp_in_training = False
            layer.reset_range_counters()  # counts from training are not the user's inputs


def robust_finetune(model: nn.Module, data: Dataset, config: RobustConfig | None = None, *,
                    teacher: nn.Module | None = None, **changes: Any) -> RobustResult:
    """Fine-tune ``model`` (an original model or a PANN) so that its PANN at the target
    precision keeps the accuracy; see the module docstring for the techniques.

    Settings come from ``config`` (a :class:`RobustConfig`) updated by keyword arguments, e.g.
    ``robust_finetune(model, digits, bits=4, epochs=15)``. Returns a :class:`RobustResult`
    whose ``pann`` is ready for :func:`he_backend.compile`. ``teacher`` (with ``distill > 0``):
    the model to distil from; by default a frozen copy of ``model`` (required if it is a PANN).
    """
    valid = {f.name for f in fields(RobustConfig)}
    if set(changes) - valid:
        raise ValueError(f"unknown settings {sorted(set(changes) - valid)}; RobustConfig has {sorted(valid)}")
    cfg = replace(config or RobustConfig(), **changes)
    if cfg.perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {cfg.perturbation!r}")
    if cfg.progressive not in PROGRESSIVE:
        raise ValueError(f"progressive must be one of {PROGRESSIVE}, got {cfg.progressive!r}")
    if cfg.weight_decay < 0 or cfg.range_penalty < 0:
        raise ValueError("weight_decay and range_penalty must be >= 0")
    if not 0.0 <= cfg.distill <= 1.0:
        raise ValueError(f"distill must be in [0, 1], got {cfg.distill}")
    device = data.x_train.device  # train there; calibrate and fit on the CPU
    master = copy.deepcopy(model).to(device)
    if cfg.distill > 0 and teacher is None:
        if polyact_layers(master):
            raise ValueError("distilling into a PANN needs teacher= (its original model)")
        teacher = copy.deepcopy(model).to(device).eval()
    teacher = teacher.to(device).eval() if cfg.distill > 0 else None
    stages: list[Stage] = []

    if polyact_layers(master):  # already a PANN: fine-tune it as it is
        if cfg.trainable_coefficients:
            for layer in polyact_layers(master).values():
                layer.set_trainable(True)
        start = evaluate(master, data.x_test, data.y_test) if cfg.guard else None
        _train_pann(master, data, cfg, cfg.epochs, guarded=cfg.guard, teacher=teacher)
        final = evaluate(master, data.x_test, data.y_test)
        stages.append(Stage("fine-tune PANN", cfg.epochs, final))
        return RobustResult(copy_metadata(model, master).eval(), None, stages, None, start, final if cfg.guard else None)

    if all(cfg.precision()[k] is None for k in ("degree", "bits", "alpha", "tolerance")):
        raise ValueError("give the target precision: degree=, bits=, alpha= or tolerance=")
    if cfg.perturbation != "polynomial" and (cfg.progressive or cfg.trainable_coefficients):
        raise ValueError("progressive replacement and trainable coefficients train through the "
                         "polynomials: use perturbation='polynomial'")
    start_state = copy.deepcopy(master.state_dict())
    start = _pann_accuracy(master, data, cfg) if cfg.guard else None
    sites = [s.name for s in prepare_structure(master).sites]
    schedule = _schedule(cfg, sites) if cfg.perturbation == "polynomial" else [("original activations", {})]
    per_stage = max(1, cfg.epochs // len(schedule))
    pann, report = None, None
    for i, (label, kwargs) in enumerate(schedule):
        last = i == len(schedule) - 1  # the stage at the target precision, every layer converted
        if cfg.perturbation == "polynomial":
            pann, report = _convert(master, data, cfg, **kwargs)
            pann.to(device)
            if cfg.trainable_coefficients:
                for layer in polyact_layers(pann).values():
                    layer.set_trainable(True)
            trained = pann
            _train_pann(pann, data, cfg, per_stage, guarded=cfg.guard and last, teacher=teacher)
        else:
            perturb = None
            if cfg.perturbation is not None:
                trained, intervals, label, perturb = _perturbed_with_step(master, data, cfg)
            else:
                trained, intervals = _plain_intervals(master, data, cfg)
            guard = _converting_guard(trained, master, data, cfg) if cfg.guard else None
            _train_stage(trained, intervals, data, cfg, per_stage, perturb, guard, teacher)
        stages.append(Stage(label, per_stage, evaluate(trained, data.x_test, data.y_test)))
        _copy_weights(trained, master)
    if pann is None:
        pann, report = _convert(master, data, cfg, **cfg.precision())
        pann.to(device)
    final = evaluate(pann, data.x_test, data.y_test) if cfg.guard else None
    if start is not None and final < start:  # progressive stages ended below the start: keep the start
        master.load_state_dict(start_state)
        pann, report = _convert(master, data, cfg, **cfg.precision())
        pann.to(device)
        final = evaluate(pann, data.x_test, data.y_test)
        stages.append(Stage("guard: kept the starting weights", 0, final))
    return RobustResult(pann.eval(), report, stages, master.to(device).eval(), start, final)
