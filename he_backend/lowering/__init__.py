"""PANN -> encrypted steps, built from layer structure: slot layouts of tensors (flat or
strided "gap" layouts, several ciphertexts per tensor) and the Galois keys of the plan's maps,
without any dense n x n matrix."""
from .key_choice import best_baby, candidate_steps, choose_keys
from .layout import Layout, choose_layout, count_diagonals, row_aligned_input

__all__ = ["Layout", "best_baby", "candidate_steps", "choose_keys", "choose_layout", "count_diagonals",
           "row_aligned_input"]
