"""polyact: polynomial neural networks for privacy-preserving inference.

Fit certified polynomial approximations of activations, convert trained PyTorch models into
polynomial form (PANNs), train them to tolerate low-precision approximations, and run them under
CKKS homomorphic encryption (see :mod:`he_backend`).
"""
from .activations import available_activations, get_activation
from .fit import certify, fit, fit_to_tolerance
from .poly import ChebPoly, CompositePoly, chebyshev_depth, poly_from_dict, poly_from_json

__all__ = [
    "ChebPoly",
    "CompositePoly",
    "available_activations",
    "certify",
    "chebyshev_depth",
    "fit",
    "fit_to_tolerance",
    "get_activation",
    "poly_from_dict",
    "poly_from_json",
]
__version__ = "0.1.0"
