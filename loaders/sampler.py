"""`PackingSampler`: the stream's packing plan over your own map-style dataset.

    counts = frame_tokens(frames_of_each_item, max_frames=1024, capacity=2048).tokens
    sampler = PackingSampler(counts, capacity=2048, rows_per_batch=4, max_frames=1024, rank=rank, world=world)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.collate, num_workers=2)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:                # PackedBatch, as from PackedStream
            ...

Planned by `loaders.plan.plan_tokens`, the function `PackedStream` plans with (each sample its
own shard): the same packer, the same dealing of batches to ranks, the same all-padding filler
(an empty index list, collated to `is_padding`) so every rank runs the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from torch.utils.data import Sampler

from loaders.batch import PackedBatch
from loaders.collate import collate_packed
from loaders.config import StreamConfig
from loaders.plan import EpochPlan, plan_tokens


class PackingSampler(Sampler[list[int]]):
    """Batches of dataset indices that fill `rows_per_batch` rows of `capacity` tokens.

    token_counts: tokens of each dataset item (`loaders.tokens.frame_tokens` counts ready fbanks).
    max_frames: the crop `collate` applies to longer fbanks (count with the same, e.g. the model's).
    mode / buffer / max_per_row / shuffle / seed: the packer's settings, as in `StreamConfig`.
    rank / world: this data-parallel rank among `world`; every rank gets the same step count.
    """

    def __init__(
        self,
        token_counts: ArrayLike,
        capacity: int,
        rows_per_batch: int,
        *,
        max_frames: int | None = None,
        mode: str = "first_fit",
        buffer: int = 256,
        max_per_row: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.config = StreamConfig(
            rows_per_batch=rows_per_batch,
            max_tokens=capacity,
            packing=mode,
            buffer=buffer,
            max_per_row=max_per_row,
            shuffle=shuffle,
            seed=seed,
            backend="local",
        )
        self.tokens = np.asarray(token_counts, dtype=np.int64)
        bad = np.flatnonzero((self.tokens < 1) | (self.tokens > capacity))
        if len(bad):
            raise ValueError(f"token count {self.tokens[bad[0]]} of item {bad[0]} is not in 1..{capacity} (capacity)")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} and world {world} must satisfy 0 <= rank < world")
        self.rank, self.world = rank, world
        self.max_frames = max_frames
        self.epoch = 0
        self._plan: EpochPlan | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's plan (identical on every rank); the latest one is kept."""
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = plan_tokens(self.tokens, np.arange(len(self.tokens)), self.config, epoch)
        return self._plan

    def __len__(self) -> int:
        return self.plan(self.epoch).steps(self.world)

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.plan(self.epoch)
        for step in range(plan.steps(self.world)):
            batch = plan.batch_for(step, self.rank, self.world)
            yield [] if batch is None else plan.sample[plan.batch_starts[batch] : plan.batch_starts[batch + 1]].tolist()

    def collate(self, items: Sequence[Mapping]) -> PackedBatch:
        """`collate_packed` with this sampler's batch shape."""
        return collate_packed(items, self.config.max_tokens, self.config.rows_per_batch, self.max_frames)
