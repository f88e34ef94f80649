"""The compiler: a PANN's graph (:mod:`polyact.ir`) becomes a plan (:mod:`he_backend.protocol.plan`).

- :mod:`~he_backend.lowering.compiler`: ``compile`` folds every foldable map into the affine
  weights, places the tensors in slots, chooses parameters, keys, giant steps, periods, levels
  and scales, and the segment length;
- :mod:`~he_backend.lowering.layout`: slot layouts of tensors (flat or strided "gap" layouts,
  several ciphertexts per tensor), without any dense n x n matrix;
- :mod:`~he_backend.lowering.key_choice`: which rotations get Galois keys;
- :mod:`~he_backend.lowering.segments`: levels, value bounds, the cost model and the placement of
  refresh points.
"""
from .key_choice import best_baby, candidate_steps, choose_keys
from .layout import Layout, choose_layout, count_diagonals, row_aligned_input

__all__ = ["Layout", "best_baby", "candidate_steps", "choose_keys", "choose_layout", "count_diagonals",
           "row_aligned_input"]
