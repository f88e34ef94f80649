"""The activation zoo: the nonlinearities users' networks contain and :func:`polyact.fit`
approximates, by name or as modules.

- :mod:`~polyact.activations.fixed`: ``x^2``, ``|x|``, ``sign`` and every activation's kinks;
- :mod:`~polyact.activations.learnable`: AULU, xIELU, APA/AGLU, PWLU, PAU, DiTAC;
- :mod:`~polyact.activations.literature`: ULU, ReLU^2, EELU, Sqish, Swim, LSLU, TAAF, APALU, NEAF, RAF;
- :mod:`~polyact.activations.registry`: the names (``get_activation``);
- :mod:`~polyact.activations.elementwise`: torch's elementwise functions fitted like activations
  (clamps, leaky and parametric ReLUs), with their constant arguments.
"""
from .fixed import Abs, Sign, Square, activation_breakpoints
from .registry import ACTIVATIONS, LEARNABLE, activation_name, available_activations, get_activation

__all__ = ["ACTIVATIONS", "LEARNABLE", "Abs", "Sign", "Square", "activation_breakpoints", "activation_name",
           "available_activations", "get_activation"]
