"""The shard format: WebDataset tars of PCM16 audio, a parquet index with precomputed lengths,
and dataset.json. Writing lives in `shards.build`; this package root is the reading side."""
from shards.dataset import ShardDataset
from shards.tar import ShardError, ShardSample, read_shard

__all__ = ["ShardDataset", "ShardError", "ShardSample", "read_shard"]
