"""The backend-independent form of a PANN: a graph of sparse affine maps and polynomials
(:mod:`~polyact.ir.graph`), built from the layers' structure (:mod:`~polyact.ir.lower`,
:mod:`~polyact.ir.linear_maps`).

Conversion lowers every PANN it makes, so that a model that cannot run encrypted is refused up
front, naming the layer, and the report's depth is the one encryption spends; per-layer
allocation costs it; the CKKS compiler (:mod:`he_backend.lowering`) places it in slots.
"""
from .graph import INPUT, AffineNode, LoweringError, PolyGraph, PolyNode, is_identity
from .lower import lower

__all__ = ["INPUT", "AffineNode", "LoweringError", "PolyGraph", "PolyNode", "is_identity", "lower"]
