"""A small, deterministic training loop for classifiers (Adam, cosine schedule, optional mixup,
distillation from a teacher and extra loss terms), a best-checkpoint guard, and evaluation
helpers."""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import Dataset
from ..nn.poly_act import OutOfRangeWarning


@dataclass
class TrainHistory:
    """Per-epoch training loss and test accuracy (percent)."""

    loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on ``x``, computed in batches."""
    was_training = model.training
    model.eval()
    outputs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in percent."""
    return accuracy(predict(model, x), y)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.), batch mean."""
    t = temperature
    return t * t * F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                            reduction="batchmean")


class BestCheckpoint:
    """The best-checkpoint guard: scores the model before training and after every epoch
    (``score(model)``, higher is better) and keeps the best state, so :meth:`restore` never
    leaves the model worse than it started (by that score)."""

    def __init__(self, model: nn.Module, score: Callable[[nn.Module], float]) -> None:
        self.score = score
        self.start = self.best = float(score(model))
        self.best_epoch = 0  # 0: the starting weights
        self.state = copy.deepcopy(model.state_dict())
        self.scores: list[float] = [self.start]

    def __call__(self, model: nn.Module, epoch: int) -> None:
        value = float(self.score(model))
        self.scores.append(value)
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            self.state = copy.deepcopy(model.state_dict())

    def restore(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.state)
        return model


def train_classifier(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 30,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    batch_size: int = 64,
    mixup: float = 0.0,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    perturb: Callable[[Callable[[], torch.Tensor]], None] | None = None,
    grad_clip: float | None = 5.0,
    seed: int = 0,
    progress: bool = False,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 2.0,
    on_epoch: Callable[[nn.Module, int], None] | None = None,
) -> TrainHistory:
    """Train ``model`` in place with a cosine learning-rate schedule.

    ``optimizer="adamw"`` (decoupled ``weight_decay``) or ``"sgd"`` (Nesterov ``momentum``,
    ``weight_decay`` as an L2 penalty, the usual CNN recipe). ``mixup > 0`` mixes pairs of samples with
    ``lambda ~ Beta(mixup, mixup)``. ``extra_loss()`` is added to each batch's loss after the
    forward pass (e.g. a range penalty collected by hooks). ``perturb(loss_of)``, if given, is
    called before each batch's forward pass with a function computing that batch's loss (it may
    run it to choose worst-case perturbations, see :class:`polyact.train.robust.WorstCasePerturbation`). Batches with a non-finite loss are
    skipped; too many of them raise ``RuntimeError``. With a ``teacher`` (kept in eval mode) the
    loss is ``(1 - distill) CE + distill T^2 KL(teacher || student)`` at temperature ``T``
    (:func:`distillation_loss`). ``on_epoch(model, epoch)`` runs after each epoch (e.g. a
    :class:`BestCheckpoint`).
    """
    if not 0.0 <= distill <= 1.0 or (distill > 0 and teacher is None):
        raise ValueError(f"distill must be in [0, 1] and needs a teacher, got distill={distill}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                              weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    steps = epochs * max(1, (len(data.x_train) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history = TrainHistory()
    skipped = 0
    bar = tqdm(range(epochs), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(data.x_train))
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            if mixup > 0:
                lam = float(rng.beta(mixup, mixup))
                perm = torch.randperm(len(idx))
                inputs, targets, weights = lam * x + (1 - lam) * x[perm], (y, y[perm]), (lam, 1 - lam)
            else:
                inputs, targets, weights = x, (y,), (1.0,)

            soft = None
            if teacher is not None and distill > 0:
                with torch.no_grad():
                    soft = teacher.eval()(inputs)

            def loss_of(inputs=inputs, targets=targets, weights=weights, soft=soft) -> torch.Tensor:
                logits = model(inputs)
                loss = sum(w * F.cross_entropy(logits, t) for w, t in zip(weights, targets))
                if soft is None:
                    return loss
                return (1.0 - distill) * loss + distill * distillation_loss(logits, soft, temperature)

            if perturb is not None:
                perturb(loss_of)
            loss = loss_of()
            if extra_loss is not None:
                loss = loss + extra_loss()
            if not torch.isfinite(loss):
                skipped += 1
                if skipped > max(10, steps // 10):
                    raise RuntimeError(
                        f"training diverged: {skipped} batches gave a non-finite loss; lower the "
                        "learning rate, raise the precision, or add a range penalty"
                    )
                continue
            opt.zero_grad()
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            schedule.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.loss.append(total / max(count, 1))
        with warnings.catch_warnings():  # monitoring while weights move; counters stay
            warnings.simplefilter("ignore", OutOfRangeWarning)
            history.test_accuracy.append(evaluate(model, data.x_test, data.y_test))
        bar.set_postfix(loss=f"{history.loss[-1]:.3f}", acc=f"{history.test_accuracy[-1]:.1f}")
        if on_epoch is not None:
            on_epoch(model, epoch + 1)
            model.train()
    model.eval()
    return history
