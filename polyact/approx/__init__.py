"""Polynomials that approximate activations, with certified errors.

- :mod:`~polyact.approx.polynomials`: :class:`ChebPoly` (a Chebyshev series on an interval) and
  :class:`CompositePoly` (a chain of odd stages for sign, ReLU, ``|x|`` and max);
- :mod:`~polyact.approx.remez`: the Remez exchange (best uniform approximation);
- :mod:`~polyact.approx.composite`: composite sign / ``|x|`` / ReLU at minimal depth;
- :mod:`~polyact.approx.targets`: what may be fitted (a zoo name, a module, a callable);
- :mod:`~polyact.approx.fitting`: ``fit``, ``fit_to_tolerance`` and ``certify``;
- :mod:`~polyact.approx.schedule`: the depth-optimal evaluation schedule of a series (what CKKS
  runs) and its float64 twin.
"""
from .fitting import METHODS, certify, fit, fit_to_tolerance
from .polynomials import ChebPoly, CompositePoly, Polynomial, chebyshev_depth, poly_from_dict, poly_from_json
from .schedule import PolyPlan, plan_polynomial

__all__ = ["METHODS", "ChebPoly", "CompositePoly", "PolyPlan", "Polynomial", "certify", "chebyshev_depth", "fit",
           "fit_to_tolerance", "plan_polynomial", "poly_from_dict", "poly_from_json"]
