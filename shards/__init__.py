"""The shard format: WebDataset tars of PCM16 audio, a parquet index with precomputed lengths,
and dataset.json. Writing lives in `shards.build`; this package root is the reading side (loaded on first use)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "dataset": ["ShardDataset"],
        "tar": ["ShardError", "ShardSample", "read_shard"],
    },
)
