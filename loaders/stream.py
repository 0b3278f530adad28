"""`PackedStream`: shards in, fixed-shape `PackedBatch`es out, exactly once per epoch.

    stream = PackedStream("data/demo/train", rows_per_batch=4, rank=rank, world=world)
    stream = PackedStream("data/demo/train", StreamConfig(rows_per_batch=4, scales=SCALE_GRID))
    for batch in stream.epoch(e):           # or stream.epoch(e, start_step=k) to resume
        ...
    loader = DataLoader(stream, batch_size=None, num_workers=2)   # a torch IterableDataset too
    stream.set_epoch(e)
    for batch in loader:                    # the batches of stream.epoch(e), in order, each once
        ...

Plan from metadata (`loaders.plan`), then featurize (`loaders.assemble`): `backend="ray"` runs
the assembly as Ray Data tasks streaming batches in step order; `backend="local"`
runs the very same function in-process, or in DataLoader workers (worker w of k takes steps
w, w+k, ...; DataLoader fetches from its workers in turn, which restores step order).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from loaders.assemble import BatchSpec, FeatureConfig, Reads, assemble, batch_spec, read_audio, to_batch
from loaders.batch import PackedBatch
from loaders.config import StreamConfig
from loaders.index import StreamIndex
from loaders.plan import EpochPlan, plan_epoch
from loaders.threads import torch_threads
from shards.dataset import DATASET_FILE, ShardDataset
from shards.location import Location
from shards.parallel import quiet_ray_data


class PackedStream(IterableDataset):
    """Packed batches of one split of a shard set, for one trainer rank (see module docstring).

    shards: a split folder (`OUT/train`), or a shard-set folder with `split` naming the split
        (default train); a local path or a URL (s3://, gs://, http(s)://, ...: `shards.location`).
    config: a `StreamConfig`; keyword settings (its field names) build one or override its fields.
    rank / world: this data-parallel rank among `world`; every rank gets the same step count.

    As a torch `IterableDataset`: `set_epoch(e)` picks the epoch `iter()` delivers, `len()` is its
    step count, and `state_dict()` / `load_state_dict()` hold the position (epoch, next step),
    as torchdata's `StatefulDataLoader` expects.
    """

    def __init__(
        self,
        shards: str | Path,
        config: StreamConfig | None = None,
        *,
        split: str | None = None,
        rank: int = 0,
        world: int = 1,
        **settings,
    ):
        if config is not None and not isinstance(config, StreamConfig):
            raise TypeError(
                f"config must be a StreamConfig, got {config!r}: pass settings by name (rows_per_batch=...)"
            )
        self.config = replace(config, **settings) if config is not None else StreamConfig(**settings)
        if split is not None and not isinstance(split, str):
            raise TypeError(
                f"split names the data split ('train', 'valid', 'test'), got {split!r}; ranks are rank=, world="
            )
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} and world {world} must satisfy 0 <= rank < world")
        self.rank, self.world = rank, world
        self.dataset, self.split = _open(Location.of(shards), split)
        stats = self.dataset.fbank_stats
        if not stats:
            raise ValueError(f"{self.dataset.root / DATASET_FILE} has no fbank statistics: rebuild it with make_shards")
        self.features = FeatureConfig(
            stream=self.config,
            split_dir=(self.dataset.root / self.split).url,
            sample_rate=self.dataset.sample_rate,
            num_classes=len(self.dataset.labels),
            multi_label=bool(self.dataset.meta.get("multi_label")),
            mean=stats["mean"],
            std=stats["std"],
        )
        self.dataset.shard_locations(self.split)  # a missing shard is an error now, not mid-epoch
        self.index = StreamIndex.read(self.dataset, self.split)
        self._plan_index = self.index.plan_index
        self._plans: dict[int, EpochPlan] = {}
        self.stats: dict[int, dict] = {}
        # (epoch, first step) of the next iter(): in shared memory, so that DataLoader workers,
        # persistent ones included, see set_epoch() and load_state_dict() made in the trainer
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._delivered: dict[str, int] | None = None  # state_dict() of the pass under way in this process

    @property
    def labels(self) -> list[str]:
        return self.dataset.labels

    @property
    def num_samples(self) -> int:
        """Samples in the split (all ranks together)."""
        return len(self.index)

    def __len__(self) -> int:
        """Steps this rank runs in the epoch set by `set_epoch` (`num_samples` counts samples)."""
        return self.steps(int(self._position[0]))

    def set_epoch(self, epoch: int) -> None:
        """The epoch `iter()` delivers next, from step 0; the epoch already set keeps a step
        restored by `load_state_dict`, so a resumed loop may call this as usual."""
        if epoch != int(self._position[0]):
            self._move(epoch, 0)

    def state_dict(self) -> dict[str, int]:
        """Where delivery stands: {"epoch", "next_step"} (in a DataLoader worker: the first step
        of its next round of turns). `batch.epoch` and `batch.step + 1` of the last batch a trainer
        took say the same, whatever the number of workers."""
        return (
            dict(self._delivered)
            if self._delivered
            else {"epoch": int(self._position[0]), "next_step": int(self._position[1])}
        )

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at (epoch, next_step): `iter()` then yields exactly the remaining batches."""
        missing = {"epoch", "next_step"} - set(state)
        if missing:
            raise KeyError(f"PackedStream state {state!r} lacks {sorted(missing)}")
        if get_worker_info() is not None:  # torchdata restores each worker: its own position, unshared
            self._position = torch.zeros(2, dtype=torch.int64)
        self._move(int(state["epoch"]), int(state["next_step"]))

    def _move(self, epoch: int, step: int) -> None:
        self._position[0], self._position[1] = epoch, step
        self._delivered = None

    def __iter__(self) -> Iterator[PackedBatch]:
        """This rank's batches of the set epoch from the set step on; inside DataLoader worker w of
        k, the steps w, w+k, ... of those (each step once, in order once DataLoader interleaves)."""
        epoch, start = int(self._position[0]), int(self._position[1])
        worker = get_worker_info()
        turn, turns = (0, 1) if worker is None else (worker.id, worker.num_workers)
        if worker is not None and self.config.backend == "ray":
            raise RuntimeError(
                "PackedStream(backend='ray') inside DataLoader workers would start Ray in every worker: "
                "use DataLoader(stream, batch_size=None, num_workers=0) (Ray tasks already featurize in parallel), "
                "or backend='local' to featurize in the DataLoader workers"
            )
        steps = self.steps(epoch)
        if not 0 <= start <= steps:
            raise ValueError(f"next_step {start} is not in 0..{steps} (epoch {epoch} has {steps} steps on this rank)")
        self._delivered = {"epoch": epoch, "next_step": start}
        return self._iterate(epoch, start, turn, turns)

    def _iterate(self, epoch: int, start: int, turn: int, turns: int) -> Iterator[PackedBatch]:
        steps = self.steps(epoch)
        for batch in self.epoch(epoch, min(start + turn, steps), turns):
            self._delivered = {"epoch": epoch, "next_step": min(batch.step - turn + turns, steps)}
            yield batch

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's plan (identical on every rank); the latest one is kept."""
        if epoch not in self._plans:
            self._plans.clear()  # the former epoch's plan goes before the next is made, not after
            self._plans[epoch] = plan_epoch(self._plan_index, self.config, epoch, self.index.key_hash)
        return self._plans[epoch]

    def steps(self, epoch: int) -> int:
        """Batches this rank receives in `epoch` (equal on all ranks; varies with the epoch's scales)."""
        return self.plan(epoch).steps(self.world)

    def specs(self, epoch: int, start_step: int = 0, stride: int = 1) -> list[BatchSpec]:
        """Work items of this rank's steps start_step, start_step + stride, ... of `epoch`."""
        plan = self.plan(epoch)
        if not 0 <= start_step <= plan.steps(self.world):
            raise ValueError(f"start_step {start_step} is not in 0..{plan.steps(self.world)}")
        return [
            batch_spec(plan, self.index, plan.batch_for(step, self.rank, self.world), step)
            for step in range(start_step, plan.steps(self.world), stride)
        ]

    def epoch(self, epoch: int, start_step: int = 0, stride: int = 1) -> Iterator[PackedBatch]:
        """This rank's batches of `epoch` from `start_step` on (every `stride`-th), in step order."""
        specs = self.specs(epoch, start_step, stride)
        arrays = self._assemble_ray(specs) if self.config.backend == "ray" else self._assemble_local(specs)
        stats = self.stats[epoch] = _empty_stats()
        plan = self.plan(epoch)
        stats["plan_pad_ratio"] = plan.pad_ratio
        waited = time.perf_counter()
        for item in arrays:
            batch = to_batch(item, self.features)
            stats["data_wait_s"] += time.perf_counter() - waited
            _count(stats, batch)
            for failure in batch.failed:
                print(
                    f"PackedStream: {failure['shard']} {failure['key']}: {failure['reason']} (left as padding)",
                    file=sys.stderr,
                )
            yield batch
            waited = time.perf_counter()

    def _assemble_local(self, specs: list[BatchSpec]) -> Iterator[dict]:
        """In-process assembly; a reader thread fetches the bytes of up to `prefetch` batches
        ahead, so waiting on storage (object stores above all) overlaps featurizing."""
        ahead = self.config.prefetch
        if not ahead:
            yield from (featurize_batch(spec, self.features) for spec in specs)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="elasticast-reads") as reader:
            pending = deque(reader.submit(read_audio, spec.samples, self.features) for spec in specs[:ahead])
            for i, spec in enumerate(specs):
                reads = pending.popleft().result()
                if i + ahead < len(specs):
                    pending.append(reader.submit(read_audio, specs[i + ahead].samples, self.features))
                yield featurize_batch(spec, self.features, reads)

    def _assemble_ray(self, specs: list[BatchSpec]) -> Iterator[dict]:
        import ray.data

        if not specs:
            return
        with quiet_ray_data(preserve_order=True):
            dataset = ray.data.from_items([{"spec": s.to_json()} for s in specs], override_num_blocks=len(specs))
            dataset = dataset.map_batches(
                _assemble_one,
                fn_kwargs={"features": self.features},
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.TaskPoolStrategy(size=self.config.workers),
                num_cpus=self.config.worker_cpus,
            )
            for item in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=self.config.prefetch):
                yield {name: value[0] for name, value in item.items()}


def featurize_batch(spec: BatchSpec, features: FeatureConfig, reads: Reads | None = None) -> dict:
    """`assemble` with the stream's torch thread count, the caller's restored afterwards."""
    with torch_threads(features.stream.torch_threads):
        return assemble(spec, features, reads)


def _assemble_one(batch: dict, features: FeatureConfig) -> dict:
    """Ray Data task: one batch spec in, its arrays out. Tasks rather than an actor pool: Ray
    reuses its worker processes (imports and feature caches warm) from one epoch to the next,
    where a pool of actors would start afresh with every epoch's dataset."""
    arrays = featurize_batch(BatchSpec.from_json(str(batch["spec"][0])), features)
    return {
        name: np.asarray([value]) if name != "meta" else np.array([value], dtype=object)
        for name, value in arrays.items()
    }


def _open(path: Location, split: str | None) -> tuple[ShardDataset, str]:
    if (path / DATASET_FILE).is_file():
        return ShardDataset(path), split or "train"
    if (path.parent / DATASET_FILE).is_file():
        if split not in (None, path.name):
            raise ValueError(f"{path} is split {path.name!r} but split={split!r} was asked for")
        return ShardDataset(path.parent), path.name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (no such folder, or no such bucket or prefix)")
    raise FileNotFoundError(
        f"{path} is neither a shard set nor a split folder of one (no {DATASET_FILE} there or above)"
    )


def _empty_stats() -> dict:
    return {
        "batches": 0,
        "padding_batches": 0,
        "samples": 0,
        "tokens": 0,
        "slots": 0,
        "cut_tokens": 0,
        "failed": 0,
        "requests": 0,
        "retries": 0,
        "requests_per_batch": 0.0,
        "data_wait_s": 0.0,
        "pad_ratio": 0.0,
        "cut_ratio": 0.0,
    }


def _count(stats: dict, batch: PackedBatch) -> None:
    stats["batches"] += 1
    stats["padding_batches"] += batch.is_padding
    stats["samples"] += batch.num_samples
    stats["tokens"] += batch.real_tokens
    stats["slots"] += batch.segment_ids.numel()
    stats["cut_tokens"] += batch.cut_tokens
    stats["failed"] += len(batch.failed)
    stats["requests"] += batch.requests
    stats["retries"] += batch.retries
    stats["requests_per_batch"] = stats["requests"] / stats["batches"]
    stats["pad_ratio"] = 1.0 - stats["tokens"] / stats["slots"]
    stats["cut_ratio"] = stats["cut_tokens"] / max(stats["tokens"] + stats["cut_tokens"], 1)
