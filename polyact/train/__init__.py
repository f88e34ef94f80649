"""Training: the plain loop (:mod:`~polyact.train.loop`), robust fine-tuning of a PANN
against its approximation error (:mod:`~polyact.train.robust`), and per-layer precision
allocation (:mod:`~polyact.train.allocate`)."""
from .allocate import Allocation, greedy_allocate, network_costs
from .loop import TrainHistory, accuracy, evaluate, predict, train_classifier
from .robust import (
    PERTURBATIONS,
    PROGRESSIVE,
    PerturbedActivation,
    RangePenalty,
    RobustConfig,
    RobustResult,
    range_penalty,
    robust_finetune,
)

__all__ = ["PERTURBATIONS", "PROGRESSIVE", "Allocation", "PerturbedActivation", "RangePenalty", "RobustConfig",
           "RobustResult", "TrainHistory", "accuracy", "evaluate", "greedy_allocate", "network_costs", "predict",
           "range_penalty", "robust_finetune", "train_classifier"]
