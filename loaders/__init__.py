"""Data loading for packed training: token arithmetic, row packing, packed batches, the stream
that delivers them, and the same packing over your own map-style dataset (Numba and Ray load
lazily; `loaders.lightning` needs Lightning, nothing else here does)."""

from loaders.batch import PackedBatch
from loaders.collate import collate_packed
from loaders.config import StreamConfig
from loaders.pack import Packing, pack
from loaders.sampler import PackingSampler
from loaders.stream import PackedStream
from loaders.tokens import TokenCounts, frame_tokens, shift_for_scale, token_counts, tokens_for

__all__ = ["PackedBatch", "PackedStream", "Packing", "PackingSampler", "StreamConfig", "TokenCounts", "collate_packed", "frame_tokens",
           "pack", "shift_for_scale", "token_counts", "tokens_for"]
