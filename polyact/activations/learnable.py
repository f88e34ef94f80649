"""Learnable activations from the activation-function literature.

Each is an ``nn.Module`` with scalar parameters, so that a trained instance defines one function
of one variable that :func:`polyact.fit` can approximate. Formulas are in the class docstrings.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import lsq_linear
from scipy.special import erf
from torch import nn


def _inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` for ``y > 0``."""
    return y + math.log(-math.expm1(-y))


def ulu(x: torch.Tensor, alpha_neg: torch.Tensor | float, alpha_pos: torch.Tensor | float) -> torch.Tensor:
    """ULU ``0.5 x (tanh(a x) + 1)`` with ``a = alpha_neg`` for ``x < 0``, ``alpha_pos`` else."""
    a = torch.where(x < 0, torch.as_tensor(alpha_neg, dtype=x.dtype), torch.as_tensor(alpha_pos, dtype=x.dtype))
    return 0.5 * x * (torch.tanh(a * x) + 1.0)


class AULU(nn.Module):
    """AULU: ``f(x) = 0.5 x (tanh(a x) + 1)`` with ``a = beta_neg**2`` for ``x < 0`` and
    ``a = beta_pos**2`` for ``x >= 0`` (both betas learnable)."""

    def __init__(self, beta_neg: float = 1.0, beta_pos: float = 1.0) -> None:
        super().__init__()
        self.beta_neg = nn.Parameter(torch.tensor(float(beta_neg)))
        self.beta_pos = nn.Parameter(torch.tensor(float(beta_pos)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ulu(x, self.beta_neg**2, self.beta_pos**2)

    breakpoints = (0.0,)


class XIELU(nn.Module):
    """xIELU: for ``x > 0``: ``alpha_p x^2 + beta x``; for ``x <= 0``:
    ``alpha_n (exp(min(x, eps)) - 1) - alpha_n x + beta x``, with ``alpha_p = softplus(p)``,
    ``alpha_n = beta + softplus(n)``, ``beta = 0.5``, ``eps = -1e-6``; initially
    ``alpha_p = alpha_n = 0.8``."""

    def __init__(
        self, alpha_p: float = 0.8, alpha_n: float = 0.8, beta: float = 0.5, eps: float = -1e-6
    ) -> None:
        super().__init__()
        if alpha_n <= beta:
            raise ValueError(f"xIELU needs alpha_n > beta, got alpha_n={alpha_n}, beta={beta}")
        self.p = nn.Parameter(torch.tensor(_inverse_softplus(alpha_p)))
        self.n = nn.Parameter(torch.tensor(_inverse_softplus(alpha_n - beta)))
        self.beta = beta
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha_p = F.softplus(self.p)
        alpha_n = self.beta + F.softplus(self.n)
        positive = alpha_p * x * x + self.beta * x
        negative = alpha_n * torch.expm1(torch.clamp(x, max=self.eps)) - alpha_n * x + self.beta * x
        return torch.where(x > 0, positive, negative)

    breakpoints = (0.0,)


def _apa(z: torch.Tensor, kappa: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``(lam exp(-kappa z) + 1) ** (-1 / lam)`` as ``exp(-softplus(log lam - kappa z) / lam)``,
    which neither overflows nor loses precision for large ``|z|``."""
    lam = torch.clamp(lam, min=1e-4)
    return torch.exp(-F.softplus(torch.log(lam) - kappa * z) / lam)


class APA(nn.Module):
    """Adaptive Parametric Activation ``APA(z) = (lam exp(-kappa z) + 1) ** (-1/lam)``;
    ``kappa = lam = 1`` is the logistic sigmoid."""

    def __init__(self, kappa: float = 1.0, lam: float = 1.0) -> None:
        super().__init__()
        self.kappa = nn.Parameter(torch.tensor(float(kappa)))
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _apa(z, self.kappa, self.lam)


class AGLU(APA):
    """Adaptive Generalized Linear Unit ``AGLU(z) = z APA(z)``; ``kappa = lam = 1`` is SiLU."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * _apa(z, self.kappa, self.lam)


class PWLU(nn.Module):
    """Piecewise Linear Unit: ``num_intervals`` equal pieces on a learnable ``[left, right]``
    with learnable heights at the ``num_intervals + 1`` knots and learnable outer slopes.

    In training mode the first ``stat_batches`` forward passes only record the running mean
    ``mu`` and standard deviation ``sigma`` of the inputs (and return ReLU); the unit then
    initialises itself as ReLU on ``[mu - 3 sigma, mu + 3 sigma]``.
    """

    def __init__(
        self,
        num_intervals: int = 16,
        bounds: tuple[float, float] = (-3.0, 3.0),
        stat_batches: int = 0,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if num_intervals < 1:
            raise ValueError(f"num_intervals must be >= 1, got {num_intervals}")
        self.num_intervals = num_intervals
        self.momentum = momentum
        self.left = nn.Parameter(torch.tensor(0.0))
        self.right = nn.Parameter(torch.tensor(1.0))
        self.heights = nn.Parameter(torch.zeros(num_intervals + 1))
        self.slope_left = nn.Parameter(torch.tensor(0.0))
        self.slope_right = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("running_mean", torch.tensor(0.0))
        self.register_buffer("running_var", torch.tensor(1.0))
        self.register_buffer("stat_batches_left", torch.tensor(int(stat_batches)))
        self.init_as_relu(*bounds)

    @torch.no_grad()
    def init_as_relu(self, left: float, right: float) -> None:
        """Set the unit to ReLU on ``[left, right]`` (outer slopes 0 and 1)."""
        if not left < right:
            raise ValueError(f"PWLU bounds need left < right, got ({left}, {right})")
        self.left.fill_(left)
        self.right.fill_(right)
        self.heights.copy_(torch.relu(torch.linspace(left, right, self.num_intervals + 1)))
        self.slope_left.fill_(0.0)
        self.slope_right.fill_(1.0)

    @property
    def breakpoints(self) -> tuple[float, ...]:
        knots = torch.linspace(self.left.item(), self.right.item(), self.num_intervals + 1)
        return tuple(knots.tolist())

    @torch.no_grad()
    def _record_statistics(self, x: torch.Tensor) -> None:
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(m * x.mean())
        self.running_var.mul_(1 - m).add_(m * x.var(unbiased=False))
        self.stat_batches_left -= 1
        if int(self.stat_batches_left) == 0:
            sigma = float(self.running_var.clamp_min(1e-12).sqrt())
            mu = float(self.running_mean)
            self.init_as_relu(mu - 3 * sigma, mu + 3 * sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and int(self.stat_batches_left) > 0:
            self._record_statistics(x.detach())
            return torch.relu(x)
        n = self.num_intervals
        width = (self.right - self.left) / n
        u = (x - self.left) / width
        index = torch.clamp(torch.floor(u.detach()), 0, n - 1).long()
        frac = u - index.to(u.dtype)
        h = self.heights.to(x.dtype)
        inside = h[index] + (h[index + 1] - h[index]) * frac
        below = h[0] + self.slope_left * (x - self.left)
        above = h[n] + self.slope_right * (x - self.right)
        return torch.where(x < self.left, below, torch.where(x > self.right, above, inside))


PAU_INITS = {
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
}


@functools.lru_cache(maxsize=None)
def _pau_init(
    num_degree: int, den_degree: int, init: str = "leaky_relu"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients of a safe Padé unit close to ``init`` (leaky ReLU(0.01) or GELU) on [-3, 3].

    Linearised least squares: minimise ``sum_i (P(x_i) - f(x_i) Q(x_i))^2`` over the numerator
    ``a`` and ``b_k >= 0`` with ``Q(x) = 1 + sum_k b_k |x|^k``, which is linear in ``(a, b)``.
    """
    if init not in PAU_INITS:
        raise ValueError(f"unknown PAU initialisation {init!r}; choose one of {sorted(PAU_INITS)}")
    x = np.linspace(-3.0, 3.0, 2001)
    f = PAU_INITS[init](x)
    numerator = np.vander(x, num_degree + 1, increasing=True)
    denominator = -f[:, None] * np.abs(x)[:, None] ** np.arange(1, den_degree + 1)
    lower = np.r_[np.full(num_degree + 1, -np.inf), np.zeros(den_degree)]
    sol = lsq_linear(np.hstack([numerator, denominator]), f, bounds=(lower, np.inf)).x
    return tuple(sol[: num_degree + 1]), tuple(sol[num_degree + 1 :])


class PAU(nn.Module):
    """Safe Padé Activation Unit ``P(x) / (1 + sum_k |b_k x^k|)``, numerator degree
    ``num_degree`` and denominator degree ``den_degree`` (default (5, 4)); initialised close to
    ``init`` (leaky ReLU by default, or GELU)."""

    def __init__(self, num_degree: int = 5, den_degree: int = 4, init: str = "leaky_relu") -> None:
        super().__init__()
        a, b = _pau_init(num_degree, den_degree, init)
        self.numerator = nn.Parameter(torch.tensor(a))
        self.denominator = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.numerator.to(x.dtype)
        b = self.denominator.to(x.dtype)
        p = torch.zeros_like(x) + a[-1]
        for coef in a.flip(0)[1:]:
            p = p * x + coef
        powers = torch.stack([x**k for k in range(1, b.numel() + 1)], dim=-1)
        q = 1.0 + (powers * b).abs().sum(-1)
        return p / q

    breakpoints = (0.0,)


def _phi_log(r: torch.Tensor) -> torch.Tensor:
    """``log1p(r) / r``, equal to 1 at ``r = 0`` (callers keep ``r > -1``)."""
    small = r.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(r), r)
    return torch.where(small, 1.0 - r / 2.0, torch.log1p(safe) / safe)


def _phi_exp(z: torch.Tensor) -> torch.Tensor:
    """``expm1(z) / z``, equal to 1 at ``z = 0``."""
    small = z.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1.0 + z / 2.0, torch.expm1(safe) / safe)


def cpa_integrate(
    x: torch.Tensor, knot_velocities: torch.Tensor, interval: tuple[float, float], time: float = 1.0
) -> torch.Tensor:
    """Flow ``T(x) = psi(x, time)`` of the continuous piecewise-affine velocity field ``v`` on
    ``[a, b]`` with ``v(a) = v(b) = 0`` and ``v`` equal to ``knot_velocities`` at the interior
    knots of ``len(knot_velocities) + 1`` equal cells.

    Inside a cell ``v(x) = alpha x + beta`` and ``dx/dt = v`` integrates in closed form:
    ``x(tau) = x0 + v(x0) tau (exp(alpha tau) - 1) / (alpha tau)``; the time to reach the cell
    edge ``e`` is ``log(v(e) / v(x0)) / alpha`` (infinite if ``v`` changes sign first). The
    trajectory crosses at most one cell per step and never leaves ``[a, b]``, so ``T`` is an
    increasing bijection of ``[a, b]`` (a diffeomorphism).
    """
    a, b = interval
    cells = knot_velocities.numel() + 1
    h = (b - a) / cells
    zero = knot_velocities.new_zeros(1)
    v_knots = torch.cat([zero, knot_velocities.to(x.dtype), zero])
    knots = a + h * torch.arange(cells + 1, dtype=x.dtype, device=x.device)
    slopes = (v_knots[1:] - v_knots[:-1]) / h

    pos = x.clamp(a, b)
    cell = torch.clamp(torch.floor((pos.detach() - a) / h), 0, cells - 1).long()
    remaining = torch.full_like(pos, float(time))
    for _ in range(cells + 1):
        alpha = slopes[cell]
        v0 = v_knots[cell] + alpha * (pos - knots[cell])
        moving_right = v0 > 0
        edge = torch.where(moving_right, knots[cell + 1], knots[cell])
        still = v0 == 0
        v0_safe = torch.where(still, torch.ones_like(v0), v0)
        r = alpha * (edge - pos) / v0_safe
        reaches = (~still) & (r > -1.0)
        r_safe = torch.where(reaches, r, torch.zeros_like(r))
        t_hit = torch.where(reaches, (edge - pos) / v0_safe * _phi_log(r_safe), torch.full_like(r, math.inf))
        finish = t_hit >= remaining
        tau = torch.where(finish, remaining, torch.zeros_like(remaining))
        inside = pos + v0 * tau * _phi_exp(alpha * tau)
        pos = torch.where(finish, inside, edge)
        remaining = torch.where(finish, torch.zeros_like(remaining), remaining - t_hit.clamp(max=1e30))
        step = torch.where(moving_right, 1, -1)
        cell = torch.where(finish, cell, (cell + step).clamp(0, cells - 1))
        if bool((remaining == 0).all()):
            break
    return pos


class DiTAC(nn.Module):
    """DiTAC: ``T_theta(x) Phi(x)`` on ``[a, b]`` and ``GELU(x) = x Phi(x)`` outside, where
    ``T_theta`` is the diffeomorphism of ``[a, b]`` integrated from a CPA velocity field with
    learnable knot velocities ``theta`` (:func:`cpa_integrate`) and ``Phi`` the normal CDF.
    ``theta = 0`` gives GELU."""

    def __init__(self, interval: tuple[float, float] = (-3.0, 3.0), num_cells: int = 8) -> None:
        super().__init__()
        if num_cells < 2:
            raise ValueError(f"DiTAC needs num_cells >= 2, got {num_cells}")
        if not interval[0] < interval[1]:
            raise ValueError(f"DiTAC interval needs a < b, got {interval}")
        self.interval = (float(interval[0]), float(interval[1]))
        self.theta = nn.Parameter(torch.zeros(num_cells - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.interval
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        transformed = cpa_integrate(x, self.theta, self.interval)
        inside = (x >= a) & (x <= b)
        return torch.where(inside, transformed, x) * cdf
