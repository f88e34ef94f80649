"""polyact: polynomial neural networks for privacy-preserving inference.

Fit certified polynomial approximations of activations, convert trained PyTorch models into
polynomial form (PANNs), train them to tolerate low-precision approximations, and run them under
CKKS homomorphic encryption (see :mod:`he_backend`).
"""
from . import train, tradeoff
from .activations import available_activations, get_activation
from .convert import convert
from .fit import certify, fit, fit_to_tolerance
from .modules import PolyAct
from .poly import ChebPoly, CompositePoly, chebyshev_depth, poly_from_dict, poly_from_json
from .storage import load_model, load_pann, save_model, save_pann

__all__ = [
    "train",
    "tradeoff",
    "ChebPoly",
    "CompositePoly",
    "available_activations",
    "PolyAct",
    "certify",
    "chebyshev_depth",
    "convert",
    "fit",
    "fit_to_tolerance",
    "get_activation",
    "load_model",
    "load_pann",
    "poly_from_dict",
    "poly_from_json",
    "save_model",
    "save_pann",
]
__version__ = "0.1.0"
