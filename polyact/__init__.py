"""polyact: polynomial neural networks for privacy-preserving inference.

Fit certified polynomial approximations of activations, convert trained PyTorch models into
polynomial form (PANNs), train them to tolerate low-precision approximations, and run them under
CKKS homomorphic encryption (see :mod:`he_backend`).

Names are imported on first use (PEP 562), so ``import polyact`` and the ``polyact`` command start
without loading torch: ``polyact.fit(...)`` and ``from polyact import convert`` work as usual.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# public name -> submodule defining it (add a line per name; keep it sorted)
_EXPORTS: dict[str, str] = {
    "ChebPoly": "approx.polynomials",
    "CompositePoly": "approx.polynomials",
    "PolyAct": "nn.poly_act",
    "available_activations": "activations",
    "certify": "approx.fitting",
    "chebyshev_depth": "approx.polynomials",
    "convert": "convert",
    "fit": "approx.fitting",
    "fit_to_tolerance": "approx.fitting",
    "get_activation": "activations",
    "load_model": "convert.storage",
    "load_pann": "convert.storage",
    "poly_from_dict": "approx.polynomials",
    "poly_from_json": "approx.polynomials",
    "save_model": "convert.storage",
    "save_pann": "convert.storage",
    "tune": "tuning.pipeline",
}
# public submodules
_SUBMODULES = ("train", "tradeoff")

__all__ = [*_SUBMODULES, *_EXPORTS]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name (or any submodule, e.g. ``polyact.nn.poly_act``) on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists but one of its own imports is missing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package's module type: importing the subpackage ``polyact.convert`` (say, for
    ``polyact.convert.storage``) binds the package attribute ``convert`` to that subpackage; keep
    the public function there instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{_EXPORTS.get(name)}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
