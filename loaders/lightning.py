"""`PackedDataModule`: `PackedStream` for a `lightning.Trainer`, with the trainer's rank, world
size and epoch. Lightning stays optional: only this module needs it, `loaders` never imports it.

    data = PackedDataModule("data/demo/train", StreamConfig(rows_per_batch=4, backend="local"), num_workers=2)
    trainer.fit(module, datamodule=data)      # module.training_step(batch: PackedBatch, index)

Two things a plain `DataLoader(stream)` would get wrong under Lightning, both silently:
- Lightning calls `set_epoch` on samplers only, so the stream would replay epoch 0: this loader
  sets the stream's epoch to `trainer.current_epoch` each time an epoch's pass begins.
- Lightning reads a loader's length once and ends every epoch there, but an epoch's step count
  varies with its drawn scales and packing: this loader has no length, so each epoch runs to
  its stream's end (all ranks run the same steps, so DDP stays in step).

With `StreamConfig(featurize="device")` the batches come as waveforms; the module featurizes them
once Lightning has moved them to the trainer's device (`on_after_batch_transfer`), so
`training_step` sees the same `PackedBatch` either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from loaders.batch import PackedBatch
from loaders.config import StreamConfig
from loaders.device_features import to_device
from loaders.stream import PackedStream

try:
    import lightning
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("loaders.lightning needs Lightning: pip install lightning") from exc


class EpochLoader(DataLoader):
    """`DataLoader(stream, batch_size=None)` that sets the stream's epoch from `epoch()` at every
    pass and reports no length (see the module docstring)."""

    def __init__(self, stream: PackedStream, epoch: Callable[[], int], **settings):
        super().__init__(stream, batch_size=None, **settings)
        self.epoch = epoch

    def __iter__(self) -> Iterator[PackedBatch]:
        self.dataset.set_epoch(self.epoch())
        return super().__iter__()

    def __len__(self) -> int:
        raise TypeError(
            "EpochLoader has no fixed length: an epoch's step count varies (len(loader.dataset) is this epoch's)"
        )


class PackedDataModule(lightning.LightningDataModule):
    """The training stream of the split folder `train` (`OUT/train`) with `config`, for the
    trainer's rank among its world size. num_workers / persistent_workers: the DataLoader's
    (memory is pinned when CUDA is there). rank / world: None for the trainer's `global_rank` /
    `world_size`. For validation, return `self.loader(PackedStream(...), lambda: 0)` from a
    subclass's `val_dataloader`, its config `self.config.without_augmentation()` (no SpecAugment,
    token dropout, random cuts or noise).
    """

    def __init__(
        self,
        train: str | Path | Sequence[str | Path],
        config: StreamConfig,
        *,
        num_workers: int = 0,
        persistent_workers: bool = False,
        rank: int | None = None,
        world: int | None = None,
    ):
        super().__init__()
        self.source, self.config = train, config
        self.train_stream = PackedStream(train, config)  # opened now: a bad path or setting fails before fit
        self.loader_settings = dict(num_workers=num_workers, persistent_workers=persistent_workers and num_workers > 0)
        self.rank, self.world = rank, world

    @property
    def labels(self) -> list[str]:
        return self.train_stream.labels

    def setup(self, stage: str) -> None:
        rank = self.trainer.global_rank if self.rank is None else self.rank
        world = self.trainer.world_size if self.world is None else self.world
        self.train_stream = PackedStream(self.source, self.config, rank=rank, world=world)

    def train_dataloader(self) -> EpochLoader:
        return self.loader(self.train_stream, lambda: self.trainer.current_epoch)

    def on_after_batch_transfer(self, batch: PackedBatch, dataloader_idx: int) -> PackedBatch:
        """A batch of waveforms featurized on the device it was moved to (others as they are)."""
        return to_device(batch, batch.segment_ids.device, self.train_stream.featurizer)

    def loader(self, stream: PackedStream, epoch: Callable[[], int]) -> EpochLoader:
        """A loader of `stream` at the epoch `epoch()` names when a pass begins."""
        return EpochLoader(stream, epoch, pin_memory=torch.cuda.is_available(), **self.loader_settings)
