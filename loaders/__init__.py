"""Data loading for packed training: token arithmetic, row packing, packed batches, the stream
that delivers them, and the same packing over your own map-style dataset. Names load on first use
(Numba and Ray later still); `loaders.lightning` needs Lightning, nothing else here does."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "batch": ["PackedBatch"],
        "collate": ["collate_packed"],
        "config": ["StreamConfig"],
        "feature_spec": ["FeatureSpec"],
        "pack": ["Packing", "pack"],
        "sampler": ["PackingSampler"],
        "stream": ["FailureBudgetExceeded", "PackedStream"],
        "tokens": ["TokenCounts", "frame_tokens", "shift_for_scale", "token_counts", "tokens_for"],
    },
)
