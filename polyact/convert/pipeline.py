"""Convert a trained model into a PANN (polynomial activation neural network).

``convert(model, calib_data, method="minimax", degree=15)`` does what ``torch.ao``'s
prepare / calibrate / convert steps do for quantisation:

1. **prepare** - locate every non-polynomial operation (:mod:`polyact.convert.call_sites`) and put an
   observer on each activation's input;
2. **calibrate** - run the calibration data; observers record ranges and samples;
3. **convert** - choose each interval from the observed range plus a margin, fit the
   activation there (by degree, tolerance, composite precision ``alpha``, or per-layer
   overrides) and put a :class:`~polyact.nn.poly_act.PolyAct` in its place.

The result is an ordinary ``nn.Module`` plus a :class:`~polyact.convert.report.ConversionReport`.
"""
from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..activations.elementwise import channel_slopes, prelu_channel
from ..approx.composite import PRODUCT_OF
from ..approx.fitting import fit, fit_to_tolerance
from ..approx.polynomials import ChebPoly, Polynomial
from ..approx.targets import Target, as_target
from ..data import Dataset
from ..ir.graph import LoweringError
from ..ir.lower import lower
from ..models import FACTORY_ATTR
from ..nn.poly_act import PolyAct
from ..nn.sites import ActivationSlot
from .calibration import ActivationStats, RangeObserver, choose_interval, observed_range
from .call_sites import prepare_structure
from .eager_check import EagerChecker
from .report import ConversionReport, LayerReport
from .sites import Site, Structure, UnsupportedOperationError, install
from .storage import INPUT_SHAPE_ATTR, STRUCTURE_ATTR

DEFAULT_MAXPOOL_ALPHA = 5.0

CalibrationData = Union[torch.Tensor, Dataset, Iterable]


@dataclass(frozen=True)
class FitConfig:
    """How to fit one activation. One of ``degree``, ``tolerance`` (max error), ``bits`` (max
    error ``2^-bits max(|a|, |b|)``, relative to the interval) and ``alpha`` (composite sign
    precision, relu/abs/sign only) decides the polynomial; the lowest degree meeting a
    tolerance is used."""

    method: str = "minimax"
    degree: int | None = None
    tolerance: float | None = None
    bits: float | None = None
    alpha: float | None = None
    eps: float | None = None
    margin: float = 0.1
    range_mode: str = "minmax"
    percentile: float = 99.99
    per_channel: bool = False


def _batches(data: CalibrationData, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, Dataset):
        data = data.calibration()
    if isinstance(data, torch.Tensor):
        if data.numel() == 0:
            raise ValueError("calibration data is empty")
        for i in range(0, len(data), batch_size):
            yield data[i : i + batch_size]
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


def _input_shape(data: CalibrationData) -> tuple[int, ...] | None:
    batch = _first_batch(data)
    return None if batch is None else tuple(batch.shape[1:])


def _first_batch(data: CalibrationData, size: int = 1) -> torch.Tensor | None:
    for batch in _batches(data, size):
        return batch
    return None


class MaxPoolAveragedWarning(UserWarning):
    """``maxpool="avg"`` changed what the network computes (with the measured cost)."""


@torch.no_grad()
def _averaging_cost(model: nn.Module, averaged: nn.Module, data: CalibrationData) -> str:
    """Measure, warn about and describe what average pooling instead of max pooling costs:
    test accuracy for a :class:`Dataset`, else top-1 agreement on the calibration inputs."""
    if isinstance(data, Dataset):
        x, y = data.x_test, data.y_test
    else:
        x, y = _first_batch(data, 2048), None
    before, after = copy.deepcopy(model).eval()(x).argmax(1), averaged.eval()(x).argmax(1)
    if y is not None:
        change = (f"test accuracy {100 * (before == y).float().mean():.2f}% -> "
                  f"{100 * (after == y).float().mean():.2f}% (before fitting any polynomial)")
    else:
        change = f"top-1 agreement with the original on {len(x)} calibration inputs: {100 * (before == after).float().mean():.2f}%"
    message = (f"maxpool='avg' replaced max pooling by average pooling: {change}. Fine-tune the converted "
               "network (`polyact train`, polyact.train.robust_finetune) or use maxpool='poly' to keep max pooling")
    warnings.warn(message, MaxPoolAveragedWarning, stacklevel=3)
    return message


def _pool_notes(structure: Structure, layers: list[LayerReport]) -> list[str]:
    """Depth and error bound of each polynomial max pool: ``levels x (1 + depth(|x|))`` and
    ``sum_i e_i / 2`` (max is 1-Lipschitz in each argument)."""
    pools: dict[str, list[LayerReport]] = {}
    for site, layer in zip(structure.sites, layers):
        if site.kind == "maxpool":
            pools.setdefault(site.name.rsplit(".", 1)[0], []).append(layer)
    notes = []
    for name, levels in pools.items():
        depth = sum(1 + layer.depth for layer in levels)
        bound = sum(layer.max_error for layer in levels) / 2.0
        kinds = ", ".join(f"{layer.method} degree {layer.degree}" for layer in levels)
        notes.append(f"{name}: polynomial max pooling, {len(levels)} levels of |x| ({kinds}), "
                     f"depth {depth}, max error <= {bound:.4g}")
    return notes


@torch.no_grad()
def calibrate(structure: Structure, data: CalibrationData, batch_size: int = 256, progress: bool = False) -> dict[str, RangeObserver]:
    """Observe every activation's input over ``data``; returns the observers by site name."""
    observers: dict[str, RangeObserver] = {}

    def slot(site: Site) -> nn.Module:
        observers[site.name] = RangeObserver()
        return ActivationSlot(site.activation, observers[site.name])

    install(structure, slot)
    model = structure.model.eval()
    checker = EagerChecker()
    handles = checker.attach(model) if not structure.traced else []
    try:
        for batch in tqdm(list(_batches(data, batch_size)), desc="calibrate", disable=not progress, leave=False):
            if structure.traced:
                model(batch)
            else:
                with checker:
                    model(batch)
    finally:
        for h in handles:
            h.remove()
    refusal = checker.error(structure.fallback_reason)
    if refusal:
        raise UnsupportedOperationError(refusal)
    return observers


def _config_for(site: Site, base: FitConfig, overrides: dict[str, dict[str, Any]], maxpool_alpha: float) -> FitConfig:
    if site.kind == "maxpool":  # |a - b| of a max-pool tree, to 2^-maxpool_alpha B (see _fit_pool_abs)
        base = replace(base, method="minimax", degree=None, tolerance=None, bits=maxpool_alpha, alpha=None,
                       eps=None, per_channel=False, range_mode="minmax")
        return replace(base, **overrides.get(site.name, {}))
    changes = {**overrides.get(site.target, {}), **overrides.get(site.name, {})}
    return replace(base, **changes) if changes else base


def _channel_targets(site: Site) -> list[Target] | None:
    """One target per channel for activations whose function differs per channel (a PReLU
    with one learned slope per channel)."""
    slopes = channel_slopes(site.activation)
    if slopes is None:
        return None
    return [Target(prelu_channel(float(w)), f"prelu[{c}]", (0.0,)) for c, w in enumerate(slopes)]


def _fit_interval(target: nn.Module | Target, interval: tuple[float, float], cfg: FitConfig, stats: ActivationStats, site: Site) -> Polynomial:
    if site.target == "square":
        return fit(target, interval, 2, "minimax")  # already a polynomial: exact
    if cfg.alpha is not None and site.target in PRODUCT_OF:
        return fit(target, interval, cfg.degree, "composite", alpha=cfg.alpha, eps=cfg.eps)
    if cfg.method == "composite":
        raise ValueError(f"{site.name}: method='composite' needs alpha= (precision bits) for {site.target}")
    weights = stats.histogram(interval) if cfg.method == "lsq" else None
    tolerance = cfg.tolerance
    if cfg.bits is not None:
        tolerance = 2.0 ** (-cfg.bits) * max(abs(interval[0]), abs(interval[1]))
    if tolerance is not None:
        return fit_to_tolerance(target, interval, tolerance, cfg.method, weights=weights)
    if cfg.degree is None:
        hint = " (alpha applies to relu, abs and sign only)" if cfg.alpha is not None else ""
        raise ValueError(f"{site.name} ({site.target}): give degree=, tolerance= or bits={hint}")
    return fit(target, interval, cfg.degree, cfg.method, weights=weights)


MINIMAX_ABS_BITS = 9  # |x| to 2^-9 B: minimax degree ~150 (depth 8); composites need >= 12 levels


@functools.lru_cache(maxsize=32)
def _unit_abs(bits: float) -> ChebPoly:
    """Lowest-degree minimax ``|t|`` on ``[-1, 1]`` within ``2^-bits``."""
    return fit_to_tolerance("abs", (-1.0, 1.0), 2.0 ** (-bits), "minimax", max_degree=255)


def _fit_pool_abs(site: Site, stats: ActivationStats, cfg: FitConfig) -> tuple[Polynomial, tuple[float, float]]:
    """``|x|`` of a max-pool level on the symmetric interval ``[-B, B]`` to ``2^-bits B``.

    ``|x| = B |x / B|``, so one minimax fit on ``[-1, 1]`` per precision serves every level.
    For ``|x|`` (unlike sign) a single minimax polynomial is shallower than a composite at
    these precisions (2^-5: degree 10, depth 4 vs composite depth 8; 2^-8: depth 7 vs 12),
    so composites are used only above ``MINIMAX_ABS_BITS`` bits, or when asked for with
    ``alpha`` in ``overrides``."""
    low, high = observed_range(stats, cfg.range_mode, cfg.percentile)
    interval = choose_interval(low, high, cfg.margin, symmetric=True)
    bound = interval[1]
    if cfg.bits > MINIMAX_ABS_BITS:
        return fit(site.activation, interval, None, "composite", alpha=cfg.bits), interval
    unit = _unit_abs(float(cfg.bits))
    poly = ChebPoly(np.asarray(unit.coef) * bound, interval, max_error=unit.max_error * bound,
                    method="minimax", target="abs")
    return poly, interval


def _fit_site(site: Site, stats: ActivationStats, cfg: FitConfig) -> tuple[Polynomial | list[ChebPoly], tuple[float, float]]:
    if site.kind == "maxpool" and cfg.bits is not None and cfg.alpha is None:
        return _fit_pool_abs(site, stats, cfg)
    composite = cfg.alpha is not None and site.target in PRODUCT_OF
    low, high = observed_range(stats, cfg.range_mode, cfg.percentile)
    interval = choose_interval(low, high, cfg.margin, symmetric=composite)
    channel_targets = _channel_targets(site)
    if not cfg.per_channel and channel_targets is None:
        return _fit_interval(site.activation, interval, cfg, stats, site), interval
    if composite or cfg.method == "lsq" or stats.channel_min is None:
        why = " (its function differs per channel)" if channel_targets else ""
        raise ValueError(f"{site.name}: per-channel fits{why} support minimax and chebyshev with degree= or tolerance=")
    if channel_targets is not None and len(channel_targets) != len(stats.channel_min):
        raise ValueError(f"{site.name}: {len(channel_targets)} per-channel slopes but its input has "
                         f"{len(stats.channel_min)} channels on axis 1")
    targets = channel_targets or [site.activation] * len(stats.channel_min)
    intervals = [choose_interval(lo, hi, cfg.margin) for lo, hi in zip(stats.channel_min, stats.channel_max)]
    if cfg.tolerance is not None or cfg.bits is not None:  # one degree (one schedule) for all channels
        degree = max(_fit_interval(t, iv, cfg, stats, site).degree for t, iv in zip(targets, intervals))
        cfg = replace(cfg, degree=degree, tolerance=None, bits=None)
    polys = [_fit_interval(t, iv, cfg, stats, site) for t, iv in zip(targets, intervals)]
    return polys, (min(iv[0] for iv in intervals), max(iv[1] for iv in intervals))


def _calibration_error(site: Site, poly: Polynomial | list[ChebPoly], stats: ActivationStats) -> tuple[float, float]:
    """Largest error on the calibration samples and the fraction outside the interval(s)."""
    slopes = channel_slopes(site.activation)
    if slopes is None:
        exact = as_target(site.activation)(stats.samples)
    else:
        exact = np.where(stats.samples >= 0, stats.samples, slopes[stats.sample_channels] * stats.samples)
    if isinstance(poly, list):
        approx = np.empty_like(stats.samples)
        outside = np.zeros(stats.samples.shape, dtype=bool)
        for c, p in enumerate(poly):
            mask = stats.sample_channels == c
            approx[mask] = p(stats.samples[mask])
            outside[mask] = (stats.samples[mask] < p.interval[0]) | (stats.samples[mask] > p.interval[1])
        return float(np.abs(approx - exact).max()), float(outside.mean())
    return float(np.abs(poly(stats.samples) - exact).max()), stats.outside(poly.interval)


def convert(
    model: nn.Module,
    calib_data: CalibrationData,
    *,
    method: str = "minimax",
    degree: int | None = None,
    tolerance: float | None = None,
    bits: float | None = None,
    alpha: float | None = None,
    eps: float | None = None,
    margin: float = 0.1,
    range_mode: str = "minmax",
    percentile: float = 99.99,
    per_channel: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
    layers: Iterable[str] | None = None,
    maxpool: str = "poly",
    maxpool_alpha: float = DEFAULT_MAXPOOL_ALPHA,
    use_fx: bool = True,
    batch_size: int = 256,
    progress: bool = False,
    report_depth: bool = True,
) -> tuple[nn.Module, ConversionReport]:
    """Replace every activation of ``model`` by a fitted polynomial.

    Parameters
    ----------
    model : a trained ``nn.Module`` (not modified; a copy is converted).
    calib_data : input tensor, a :class:`polyact.data.Dataset` (a calibration subset of its
        training inputs), or an iterable of batches (tensors or ``(x, y)`` pairs); a one-pass
        iterator (a generator) is read once into a list, so that every batch is observed.
    method : ``"minimax"``, ``"chebyshev"`` or ``"lsq"`` (weighted by the observed histogram).
    degree, tolerance, bits, alpha : the precision: a degree, a max error on the interval, a
        max error ``2^-bits max(|a|, |b|)`` relative to the interval, or composite sign
        precision bits for relu/abs/sign (with optional gap ``eps``).
    margin : the interval's half-width is the observed half-range times ``1 + margin``.
    range_mode, percentile : cover the observed ``"minmax"`` or a ``"percentile"`` band.
    per_channel : one polynomial per channel (same degree), each on its channel's range.
    overrides : per-layer changes keyed by layer name or activation name, e.g.
        ``{"features.2": {"degree": 31}, "gelu": {"method": "lsq"}}``.
    layers : convert only these activation layers (names as in the report); the others keep
        their original function (for progressive replacement).
    maxpool : ``"poly"`` (default) computes max pooling with polynomials,
        ``max(a, b) = (a + b)/2 + |a - b|/2`` over each window as a tree of ``|x|`` fitted to
        ``2^-maxpool_alpha B`` on ``[-B, B]`` (the shallower of a minimax and a composite
        polynomial; :mod:`polyact.nn.maxpool`; depth and error bound in the report's notes); ``"avg"`` replaces it by average pooling, which changes the network:
        the accuracy change is measured, warned about and noted (fine-tune with ``polyact
        train``); ``"error"`` refuses max pooling.
    maxpool_alpha : precision bits of the max-pool ``|x|`` (per level by name in ``overrides``,
        e.g. ``{"features.2.abs0": {"bits": 7}}``, or ``{"alpha": 8}`` for a composite).
    use_fx : trace with torch.fx (else swap activation modules only).
    report_depth : lower the PANN to report its depth (:mod:`polyact.ir.lower`; costly for large
        inputs); ``False`` leaves the report's depth ``None``.

    Returns ``(pann, report)``.
    """
    base = FitConfig(method, degree, tolerance, bits, alpha, eps, margin, range_mode, percentile, per_channel)
    if degree is None and tolerance is None and bits is None and alpha is None:
        raise ValueError("give degree=, tolerance=, bits= or alpha= (composite relu) to set the precision")
    overrides = overrides or {}
    valid_keys = {f.name for f in fields(FitConfig)}
    for key, change in overrides.items():
        if set(change) - valid_keys:
            raise ValueError(f"overrides[{key!r}] has unknown settings {sorted(set(change) - valid_keys)}; use {sorted(valid_keys)}")
    if not isinstance(calib_data, (torch.Tensor, Dataset)) and iter(calib_data) is calib_data:
        calib_data = list(calib_data)  # shape, tracing example and calibration each read the batches
    input_shape = _input_shape(calib_data)
    structure = prepare_structure(model, maxpool=maxpool, use_fx=use_fx, example=_first_batch(calib_data),
                                  input_shape=input_shape)
    if structure.avg_pooled:
        structure.notes.append(_averaging_cost(model, structure.model, calib_data))
    names = sorted(s.name for s in structure.sites)
    known = set(names) | {s.target for s in structure.sites}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"overrides name no activation of this model: {sorted(unknown)}; layers are {names}")
    if layers is not None:
        chosen = set(layers)
        if chosen - set(names):
            raise ValueError(f"layers {sorted(chosen - set(names))} are not activations of this model; layers are {names}")
        kept = [s for s in structure.sites if s.name not in chosen]
        structure.sites = [s for s in structure.sites if s.name in chosen]
        install(Structure(structure.model, kept), lambda site: site.activation)
    observers = calibrate(structure, calib_data, batch_size, progress)
    layers: list[LayerReport] = []
    polys: dict[str, PolyAct] = {}
    for site in tqdm(structure.sites, desc="fit", disable=not progress, leave=False):
        stats = observers[site.name].stats()
        cfg = _config_for(site, base, overrides, maxpool_alpha)
        poly, interval = _fit_site(site, stats, cfg)
        polys[site.name] = PolyAct(poly, target=site.target, name=site.name)
        calib_error, outside = _calibration_error(site, poly, stats)
        module = polys[site.name]
        layers.append(LayerReport(
            name=site.name, op=site.op, target=site.target, method=module.meta["method"] or cfg.method,
            degree=module.degree, depth=module.depth, interval=interval, observed=(stats.min, stats.max),
            max_error=module.meta["max_error"], calibration_error=calib_error, out_of_range=outside,
            per_channel=module.per_channel, alpha=getattr(poly, "alpha", None),
        ))
    install(structure, lambda site: polys[site.name])
    pann = structure.model.eval()
    if hasattr(model, FACTORY_ATTR):
        setattr(pann, FACTORY_ATTR, getattr(model, FACTORY_ATTR))
    options = {"maxpool": maxpool, "use_fx": use_fx}
    if use_fx and input_shape is not None:
        options["input_shape"] = list(input_shape)  # the rebuild settles trace-time values the same way
    if structure.call_counts:
        options["call_counts"] = dict(structure.call_counts)
    setattr(pann, STRUCTURE_ATTR, options)
    setattr(pann, INPUT_SHAPE_ATTR, list(input_shape) if input_shape else None)
    notes = structure.notes + _pool_notes(structure, layers)
    return pann, build_report(pann, layers, input_shape, notes, lower_graph=report_depth)


def build_report(pann: nn.Module, layers: list[LayerReport], input_shape: tuple[int, ...] | None, notes: list[str],
                 lower_graph: bool = True) -> ConversionReport:
    """Totals for a converted network: depth from its lowered graph (see :mod:`polyact.ir.lower`),
    unless ``lower_graph`` is false or the input shape is unknown."""
    depth, evals, notes = None, 0, list(notes)
    if input_shape is not None and lower_graph:
        try:
            graph = lower(copy.deepcopy(pann), input_shape)  # lower() may cast a traced copy's shared modules
            depth = graph.depth
            evals = sum(int(np.prod(n.shape)) for n in graph.poly_nodes)
            folded = [n.name for n in graph.poly_nodes if n.fold_square]
            if folded:
                notes.append(f"degree-2 activations {folded} cost one level (scale folded into the next layer)")
        except LoweringError as exc:
            notes.append(f"depth unknown: {exc}")
    return ConversionReport(layers, depth, input_shape or (), evals, notes)
