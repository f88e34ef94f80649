"""PANN -> encrypted steps, built from layer structure: slot layouts of tensors (flat or
strided "gap" layouts, several ciphertexts per tensor) and the generalised diagonals of sparse
affine maps in those layouts, without any dense n x n matrix, and the Galois keys and rotation
schedule of those maps."""
from .diagonals import TileOffsets, tile_diagonals, tile_offsets
from .layout import Layout, choose_layout, count_diagonals, row_aligned_input
from .rotations import KeySet, MapShape, baby_chain, best_baby, choose_keys, giant_runs, split_offsets

__all__ = ["KeySet", "Layout", "MapShape", "TileOffsets", "baby_chain", "best_baby", "choose_keys", "choose_layout",
           "count_diagonals", "giant_runs", "row_aligned_input", "split_offsets", "tile_diagonals", "tile_offsets"]
