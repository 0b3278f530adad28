"""Data loading for packed training, from shards to `PackedBatch`es: `tokens` (token arithmetic),
`pack` (row packing, with its Numba kernels and reference), `plan` and `index` (an epoch's plan
from the index alone), `features` and `assemble` (fbanks and the batch a plan step names),
`device_features` (the same features in one batched pass on the trainer's device, for
`featurize="device"`), `stream` (`PackedStream`, on Ray Data or in-process; `config` holds its
`StreamConfig`), `balance` and `mixup` (the paper's class-balanced draws and mixup, in the plan and
the featurizer), `batch`
and `collate` (the batch), `sampler` (the same packing over your own map-style dataset), `stats`
(dataset fbank statistics), `threads` (featurizing's torch threads), `lightning`. Names load on
first use (Numba and Ray later still); `loaders.lightning` needs Lightning, nothing else here does."""

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
