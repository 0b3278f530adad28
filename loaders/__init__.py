"""Data loading for packed training: token arithmetic and row packing (Numba loads lazily)."""

from loaders.pack import Packing, pack
from loaders.tokens import TokenCounts, shift_for_scale, token_counts, tokens_for

__all__ = ["Packing", "TokenCounts", "pack", "shift_for_scale", "token_counts", "tokens_for"]
