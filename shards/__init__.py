"""The shard format: WebDataset tars of PCM16 audio, a parquet index with precomputed lengths,
and dataset.json. Reading: `dataset` (`ShardDataset`), `tar`, `audio`, `checksum`, `verify`.
Writing: `build` (the passes), `inputs` (what to shard), `output` (how a build commits),
`parallel` (Ray Data or in-process), `demo` (the built-in corpus), `options`. Storage: `location`
(local paths and URLs), `ranged` and `retry` (ranged reads, transient errors). This package root
is the reading side (loaded on first use)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "dataset": ["ShardDataset"],
        "tar": ["ShardError", "ShardSample", "read_shard"],
    },
)
