"""Data loading for packed training: token arithmetic, row packing, packed batches and the
stream that delivers them (Numba and Ray load lazily)."""

from loaders.batch import PackedBatch
from loaders.config import StreamConfig
from loaders.pack import Packing, pack
from loaders.stream import PackedStream
from loaders.tokens import TokenCounts, shift_for_scale, token_counts, tokens_for

__all__ = ["PackedBatch", "PackedStream", "Packing", "StreamConfig", "TokenCounts", "pack", "shift_for_scale", "token_counts", "tokens_for"]
