"""PANN -> encrypted steps, built from layer structure: slot layouts of tensors (flat or
strided "gap" layouts, several ciphertexts per tensor) and the generalised diagonals of sparse
affine maps in those layouts, without any dense n x n matrix."""
from .diagonals import TileOffsets, rotation_cost, tile_diagonals, tile_offsets
from .layout import Layout, choose_layout, count_diagonals

__all__ = ["Layout", "TileOffsets", "choose_layout", "count_diagonals", "rotation_cost", "tile_diagonals", "tile_offsets"]
