"""Tuning: the cheapest PANN within an accuracy budget (:func:`tune`), from per-site measured
sensitivities and a dynamic program over levels (:mod:`~polyact.tuning.search`), fine-tuning with
distillation when conversion alone misses the budget (:mod:`~polyact.tuning.pipeline`)."""
from .pipeline import OBJECTIVES, TuneResult, TuneRow, default_options, tune
from .search import Option, cheapest_within, search_budget

__all__ = ["OBJECTIVES", "Option", "TuneResult", "TuneRow", "cheapest_within", "default_options", "search_budget", "tune"]
