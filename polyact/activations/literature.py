"""Activations from the recent activation-function literature (the second round of the zoo).

Each is an ``nn.Module`` computing one scalar function of one variable, so a trained instance is
a fitting target for :func:`polyact.fit` and :func:`polyact.convert` (which fit the module with
its current parameters). Parameters are ``nn.Parameter`` exactly where the paper trains them;
fixed constants are plain floats. Each docstring gives the formula, the paper and where the
formula was read; forms that could not be read from the paper itself say so.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fixed import activation_breakpoints
from .learnable import PAU, ulu


class ULU(nn.Module):
    """ULU: ``f(x; alpha_1)`` for ``x < 0`` and ``f(x; alpha_2)`` for ``x >= 0`` with
    ``f(x; alpha) = 0.5 x (tanh(alpha x) + 1)``, ``alpha > 0`` fixed (AULU is the learnable
    variant, ``alpha = beta^2``).

    Paper: S. Huo, "ULU: A Unified Activation Function", arXiv:2508.05073 (formula from its
    abstract). The abstract gives no values for ``alpha_1, alpha_2``; the defaults ``1, 1``
    are ours (they match AULU's initialisation ``beta = 1``).
    """

    def __init__(self, alpha_neg: float = 1.0, alpha_pos: float = 1.0) -> None:
        super().__init__()
        if alpha_neg <= 0 or alpha_pos <= 0:
            raise ValueError(f"ULU needs alpha > 0, got alpha_neg={alpha_neg}, alpha_pos={alpha_pos}")
        self.alpha_neg, self.alpha_pos = float(alpha_neg), float(alpha_pos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ulu(x, self.alpha_neg, self.alpha_pos)

    breakpoints = (0.0,)


class ReLU2(nn.Module):
    """Squared ReLU ``max(0, x)^2`` (no parameters).

    Papers: D. So et al., "Primer: Searching for Efficient Transformers for Language Modeling",
    arXiv:2109.08668; Z. Zhang et al., "ReLU^2 Wins: Discovering Efficient Activation Functions
    for Sparse LLMs", arXiv:2402.03804.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) ** 2

    breakpoints = (0.0,)  # the second derivative jumps


class EELU(nn.Module):
    """EELU ``-x erf(exp(-x))``, the best function of the evolutionary search (no parameters).

    Paper: A. Rahman, L. He, H. Wang, "Activation Function Optimization Scheme for Image
    Classification", arXiv:2409.04915 (formula from its abstract). Note the orientation: it grows
    like ``-x`` for ``x -> -inf`` and decays to 0 for ``x -> +inf``. ``exp(-x)`` is capped at
    ``e^10``, where ``erf`` is already 1 in float64, so neither value nor gradient overflows.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x * torch.erf(torch.exp(torch.clamp(-x, max=10.0)))


def _inverse_sqrt_one_plus_exp(log_scale: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(1 + exp(log_scale + z))`` as ``exp(-softplus(log_scale + z) / 2)`` (stable)."""
    return torch.exp(-0.5 * F.softplus(log_scale + z))


class Sqish(nn.Module):
    """Sqish ``alpha x + (1 - alpha) x / sqrt(1 + beta exp(-2 gamma (1 - alpha) x))`` with
    learnable ``alpha``, ``beta > 0`` and ``gamma``.

    Paper: K. Biswas, M. Karri, U. Bagci, "A Non-monotonic Smooth Activation Function",
    arXiv:2310.10126. UNVERIFIED against the paper. Searched (2026-11): the stored copy
    ar5iv.labs.arxiv.org/html/2310.10126 (abstract and introduction only, no definition);
    scholarfeed.org/paper/2310.10126v1 and arXiv digests on GitHub (abstract only); the pages,
    docs and code corpora for the formula, "Sqish" with the smooth-maximum / Leaky-ReLU wording,
    the authors' names and the arXiv id; GitHub for an authors' repository (none found). The only
    definition found is a third-party PyTorch file found by code search (repository not named in
    the index): ``sqish(x, alpha, beta, gamma) = alpha*x + (1-alpha)*x/torch.sqrt(1 +
    beta*torch.exp(-2*gamma*(1-alpha)*x))`` with all three as ``nn.Parameter`` (initialised at
    ``max(1, randn)``, which is not a paper default). This form is that one. The paper's
    initial values were not found: the defaults ``alpha = 0``, ``beta = 1``, ``gamma = 1``
    (``x sqrt(sigmoid(2x))``, smooth and non-monotonic) are ours.
    """

    def __init__(self, alpha: float = 0.0, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"Sqish needs beta > 0, got {beta}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        log_beta = torch.log(torch.clamp(self.beta, min=1e-6))
        gate = _inverse_sqrt_one_plus_exp(log_beta, -2.0 * self.gamma * (1.0 - a) * x)
        return a * x + (1.0 - a) * x * gate


class Swim(nn.Module):
    """Swim ``x/2 (1 + k x / sqrt(1 + k^2 x^2))``, Swish with the logistic gate replaced by the
    algebraic sigmoid (no exponential), ``k = 0.5`` fixed (not trained).

    Paper: M. Abdool, T. Dear, "Swim: A General-Purpose, High-Performing, and Efficient Activation
    Function for Locomotion Control Tasks", arXiv:2303.02640. Verified against the authors' code
    (github.com/maryam-abdool/Swim-Control, whose README says "Swim is defined within the new()
    function in the TD3.py file"): TD3.py at commit a52bf3c32fdffe817f727ba751e2d4129fb70a33 has
    ``new(x) = x * ((0.5 * (x*torch.rsqrt(1.0 + torch.pow(0.5 * x, 2))) + 1.0) / 2.0)``, a plain
    function with no parameter, i.e. this form with ``k = 0.5``. The paper's own text is stored
    only through its abstract (ar5iv.labs.arxiv.org/html/2303.02640). A third-party
    implementation (torch_activation) writes ``x/2 (1 + a x / sqrt(1 + x^2))``, which is not the
    authors' function.
    """

    def __init__(self, k: float = 0.5) -> None:
        super().__init__()
        self.k = float(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kx = self.k * x
        return 0.5 * x * (1.0 + kx / torch.sqrt(1.0 + kx * kx))


class LSLU(nn.Module):
    """LSLU, the point-wise part of Learnable Series Linear Units:
    ``g_0 = relu(x)``, ``g_i = relu(theta_i g_{i-1} + omega_i)`` for ``i = 1..n``, output ``g_n``,
    with learnable ``theta`` (initially 1) and ``omega`` (initially 0); at initialisation it is
    ReLU. ``n = 3`` as in the authors' VanillaNet models.

    Paper: C. Feng et al., "Activation function optimization method: Learnable series linear
    units (LSLUs)", arXiv:2409.08283; read from the authors' code
    (github.com/vontran2021/Learnable-series-linear-units-LSLU, ``LSLU.py``), which also follows
    the series with a depthwise ``(2n+1) x (2n+1)`` convolution and batch norm. That part is a
    linear layer, not a scalar function: model it as ``nn.Conv2d(C, C, 2n+1, padding=n,
    groups=C)`` + ``nn.BatchNorm2d(C)`` after this module and polyact converts it like any
    convolution.
    """

    def __init__(self, num_activations: int = 3) -> None:
        super().__init__()
        if num_activations < 1:
            raise ValueError(f"LSLU needs num_activations >= 1, got {num_activations}")
        self.theta = nn.Parameter(torch.ones(num_activations))
        self.omega = nn.Parameter(torch.zeros(num_activations))

    def _series(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """``g_stages`` (before the final ReLU when ``stages`` counts pre-activations)."""
        g = torch.relu(x)
        theta, omega = self.theta.to(x.dtype), self.omega.to(x.dtype)
        for i in range(stages):
            g = torch.relu(theta[i] * g + omega[i])
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._series(x, self.theta.numel())

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """Kinks: 0 and every ``x`` where a pre-activation ``theta_i g_{i-1}(x) + omega_i``
        changes sign. ``g_{i-1}`` is affine between the kinks found so far, so each piece
        contributes at most one root."""
        kinks = [0.0]
        with torch.no_grad():
            for i in range(self.theta.numel()):
                theta, omega = self.theta[i].item(), self.omega[i].item()
                edges = [kinks[0] - 1.0, *kinks, kinks[-1] + 1.0]
                g = self._series(torch.tensor(edges, dtype=torch.float64), i).numpy()
                h = theta * g + omega
                roots = []
                for j in range(len(edges) - 1):
                    x0, x1, h0, h1 = edges[j], edges[j + 1], h[j], h[j + 1]
                    if h0 == h1:
                        continue
                    r = x0 + (x1 - x0) * h0 / (h0 - h1)
                    lo = -math.inf if j == 0 else x0  # outer pieces extend to infinity
                    hi = math.inf if j == len(edges) - 2 else x1
                    if lo < r < hi:
                        roots.append(r)
                kinks = sorted(set(kinks + [float(r) for r in roots]))
        return tuple(kinks)


class TAAF(nn.Module):
    """Transformative adaptive activation function ``alpha f(beta x + gamma) + delta``: learnable
    vertical scale ``alpha``, horizontal scale ``beta``, horizontal shift ``gamma`` and vertical
    shift ``delta`` of a fixed inner activation module ``f`` (one without parameters, e.g.
    ``nn.Tanh()``; ``get_activation("taaf", inner="sigmoid")`` takes a zoo name). Initially
    ``alpha = beta = 1``, ``gamma = delta = 0``: the inner activation. The inner module is kept
    out of the module tree, so that conversion sees one activation, not two.

    Papers: V. Kunc, J. Klema, "Transformative adaptive activation functions in neural networks
    for gene expression inference" (PLOS ONE 2021); V. Kunc, "Exploring the Relationship:
    Transformative Adaptive Activation Functions in Comparison to Other Activation Functions",
    arXiv:2402.09249 (which states ``TAAF(x) = alpha f(beta x + gamma) + delta``).
    """

    def __init__(self, inner: nn.Module | None = None, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 0.0, delta: float = 0.0, *, name: str | None = None) -> None:
        super().__init__()
        module = nn.Tanh() if inner is None else inner
        name = name or type(module).__name__
        if any(True for _ in module.parameters()):
            raise ValueError(
                f"TAAF's inner activation must be fixed, but {name!r} has parameters; choose one "
                "without (e.g. 'tanh', 'sigmoid', 'relu'): TAAF learns the scales and shifts itself"
            )
        self.__dict__["inner"] = module  # not a submodule: one activation site for conversion
        self.inner_name = name
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.delta = nn.Parameter(torch.tensor(float(delta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.inner(self.beta * x + self.gamma) + self.delta

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """The inner activation's kinks ``k`` seen through the transform: ``(k - gamma) / beta``."""
        beta, gamma = self.beta.item(), self.gamma.item()
        if beta == 0:
            return ()
        return tuple(sorted((k - gamma) / beta for k in activation_breakpoints(self.inner)))

    def extra_repr(self) -> str:
        return f"inner={self.inner_name!r}"


class APALU(nn.Module):
    """APALU: ``a (x + x sigmoid(1.702 x))`` for ``x >= 0`` and ``b (exp(x) - 1)`` for ``x < 0``,
    with learnable ``a`` and ``b`` (``1.702 x`` is the sigmoid approximation of GELU).

    Paper: B. Subramanian et al., "APALU: A Trainable, Adaptive Activation Function for Deep
    Learning Networks", arXiv:2402.08244. Formula verified against the paper's equation as quoted
    by a review of it (themoonlight.io/review/apalu-a-trainable-adaptive-activation-function-for-
    deep-learning-networks: ``f(x) = a(x + x/(1 + exp(-1.702x)))`` if ``x >= 0``,
    ``b(exp(x) - 1)`` if ``x < 0``, "a and b are positive trainable parameters"); an independent
    PyTorch implementation found by code search has the same branches. The paper's own HTML
    (arxiv.org/html/2402.08244v2) is stored only through its introduction, so its initial
    values were not read: ``a = b = 1`` are ours, and positivity of ``a``, ``b`` is not enforced.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positive = self.a * (x + x * torch.sigmoid(1.702 * x))
        negative = self.b * torch.expm1(torch.clamp(x, max=0.0))
        return torch.where(x >= 0, positive, negative)

    breakpoints = (0.0,)


class NEAF(nn.Module):
    """Nonlinearity-enhanced adaptive activation: ReLU plus an even cubic term,
    ``alpha relu(x) + c beta |x|^3``, with layer-wise learnable ``alpha`` (initially 1) and
    ``beta`` (initially 0, so training starts from ReLU) and a fixed global strength ``c``.

    Paper: D. Yevick, "Nonlinearity Enhanced Adaptive Activation Function", arXiv:2403.19896
    (29 Mar 2024; id from an arXiv digest on GitHub, leongxj123/cn-chat-arxiv, cs.NE.md).
    UNVERIFIED: the paper's text and code were not found. Searched (2026-11): the pages corpus
    for arxiv.org/abs|html|pdf/2403.19896 and ar5iv (no stored copy), the code corpus and GitHub
    for an implementation (none). The abstract (quoted in that digest) says "A simply
    implemented activation function with even cubic nonlinearity ... generalizes the standard
    RELU function by introducing additional degrees of freedom through optimizable parameters".
    Summaries: linnk.ai/insight/machine-learning-neural-networks/enhancing-neural-network-
    accuracy-with-a-novel-adaptive-activation-function-6jRsFkN4 ("the standard ReLU function
    with an additional even cubic nonlinearity term ... two layer-dependent coefficients
    optimized during training", a global constant gamma for the cubic strength, and "both odd
    and even terms in the function"), which is this form; emergentmind.com/topics/
    rowdy-adaptive-activation-function (formulas stripped) says the activation "remains zero"
    for negative inputs, which this form is not. Check against the paper before relying on the
    negative side; the defaults ``alpha = 1``, ``beta = 0``, ``c = 1`` are ours.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, strength: float = 1.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.strength = float(strength)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.relu(x) + self.strength * self.beta * x.abs() ** 3

    breakpoints = (0.0,)


class RAF(PAU):
    """Rational activation function as used in RAFT: exactly the safe Padé unit
    ``P(x) / (1 + sum_k |b_k x^k|)`` of degrees (5, 4) (:class:`~polyact.activations.learnable.PAU`, the
    ``rational_activations`` library's version ``"A"``), initialised close to GELU instead of
    leaky ReLU. The function family is PAU's; only the starting point differs.

    Paper: H. Fang, J.-U. Lee, N. S. Moosavi, I. Gurevych, "Transformers with Learnable
    Activation Functions", arXiv:2208.14111; the version and the GELU initialisation are read
    from the authors' code (github.com/UKPLab/2022-RAFT, ``Rational(approx_func="gelu",
    version="A")``).
    """

    def __init__(self, num_degree: int = 5, den_degree: int = 4, init: str = "gelu") -> None:
        super().__init__(num_degree, den_degree, init=init)


LITERATURE = {
    "ulu": ULU,
    "relu2": ReLU2,
    "eelu": EELU,
    "sqish": Sqish,
    "swim": Swim,
    "lslu": LSLU,
    "taaf": TAAF,
    "apalu": APALU,
    "neaf": NEAF,
    "raf": RAF,
}
