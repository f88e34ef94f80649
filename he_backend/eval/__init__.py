"""What runs on ciphertexts, on TenSEAL's SEAL bindings: CKKS parameters at 128-bit security
(:mod:`~he_backend.eval.params`), the engine (:mod:`~he_backend.eval.ckks`), the steps of a
plan (:mod:`~he_backend.eval.steps`: affine maps by generalised diagonals,
:mod:`~he_backend.eval.diagonals`, :mod:`~he_backend.eval.rotations`,
:mod:`~he_backend.eval.cyclic`; polynomials), their executor (:mod:`~he_backend.eval.runner`,
with :mod:`~he_backend.eval.polyeval` for Chebyshev series), and the precision of results
(:mod:`~he_backend.eval.metrics`)."""
from .ckks import Engine
from .params import CkksParams, ParameterError, choose_params
from .runner import PlaintextCache, Runner
from .steps import AffineStep, PolyStep

__all__ = ["AffineStep", "CkksParams", "Engine", "ParameterError", "PlaintextCache", "PolyStep", "Runner", "choose_params"]
