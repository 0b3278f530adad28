"""`PackedStream`: shards in, fixed-shape `PackedBatch`es out, exactly once per epoch.

    stream = PackedStream("data/demo/train", rows_per_batch=4, rank=rank, world=world)
    stream = PackedStream("data/demo/train", StreamConfig(rows_per_batch=4, scales=SCALE_GRID))
    for batch in stream.epoch(e):           # or stream.epoch(e, consumed=c) to resume on any world
        ...
    loader = DataLoader(stream, batch_size=None, num_workers=2)   # a torch IterableDataset too
    stream.set_epoch(e)
    for batch in loader:                    # the batches of stream.epoch(e), in order, each once
        ...

Plan from metadata (`loaders.plan`), then featurize (`loaders.assemble`): `backend="ray"` runs
the assembly as Ray Data tasks streaming batches in step order; `backend="local"`
runs the very same function in-process, or in DataLoader workers (worker w of k takes steps
w, w+k, ...; DataLoader fetches from its workers in turn, which restores step order).

Faults: a sample whose bytes are bad is a hole (padding, named and counted); more holes than
`max_failed` raise `FailureBudgetExceeded`. A store that cannot serve a read within
`storage_timeout` raises `shards.retry.StorageFailure`; the epoch continues from any step with
`epoch(e, start_step=k)` once it is back.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from loaders.assemble import BatchSpec, FeatureConfig, Reads, assemble, batch_spec, read_audio, to_batch
from loaders.batch import PackedBatch
from loaders.config import StreamConfig
from loaders.device_features import DeviceFeaturizer
from loaders.feature_spec import FeatureSpec
from loaders.mix import MixedPlan, plan_mix, realised_mix, sample_measure
from loaders.plan import EpochPlan, plan_epoch
from loaders.sources import open_sources
from loaders.threads import torch_threads
from shards.parallel import quiet_ray_data
from shards.retry import StorageFailure

STORAGE_FAILURE = "storage_failure"  # what a Ray task returns in place of a batch its store did not serve


class FailureBudgetExceeded(ValueError):
    """More samples failed (holes) than `StreamConfig.max_failed` allows; names the first ones."""


class PackedStream(IterableDataset):
    """Packed batches of one split of a shard set, for one trainer rank (see module docstring).

    shards: a split folder (`OUT/train`), or a shard-set folder with `split` naming the split
        (default train); a local path or a URL (s3://, gs://, http(s)://, ...: `shards.location`).
        A list of them: a mix of sources at `config.weights` (`loaders.mix`), labels merged by name.
    labels: the label list to map the labels into, by name (default: the sources' own, merged).
    config: a `StreamConfig`; keyword settings (its field names) build one or override its fields.
    rank / world: this data-parallel rank among `world`; every rank gets the same step count.
    features: how to featurize: a `FeatureSpec` (e.g. a checkpoint's), or `FeatureSpec` settings
        (a dict, e.g. the paper's recipe) on the shard set's statistics; default: those statistics.

    As a torch `IterableDataset`: `set_epoch(e)` picks the epoch `iter()` delivers, `len()` is its
    step count, and `state_dict()` / `load_state_dict()` hold the position (epoch, batches of its
    plan consumed by all ranks together), as torchdata's `StatefulDataLoader` expects; a position
    saved on one number of ranks resumes on any other.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        config: StreamConfig | None = None,
        *,
        split: str | None = None,
        rank: int = 0,
        world: int = 1,
        labels: Sequence[str] | None = None,
        features: FeatureSpec | dict | None = None,
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
        self.sources = open_sources(shards, split, labels)
        self.dataset, self.split = self.sources.datasets[0], self.sources.splits[0]
        self.mixed = len(self.sources.indexes) > 1
        weights = self.config.weights
        if weights is not None and len(weights) != len(self.sources.indexes):
            raise ValueError(f"{len(weights)} weights for {len(self.sources.indexes)} sources {self.sources.names}")
        if self.config.sampling == "balanced" and (self.mixed or self.sources.index.weight is None):
            raise ValueError(
                f"sampling='balanced' needs one source whose index has per-sample weights; {self.sources.split_dirs} "
                + (
                    "are a mix (balance within one shard set)"
                    if self.mixed
                    else "was built before weights: rebuild it with make_shards"
                )
            )
        self.features = self.sources.features(self.config, features)
        self.index = self.sources.index
        self._plan_index = self.index.plan_index
        self._measures: list[np.ndarray] | None = None  # of each source's samples, in the mix's weight_by
        self._plans: dict[int, EpochPlan | MixedPlan] = {}
        self.stats: dict[int, dict] = {}
        # (epoch, plan batches consumed) of the next iter(): in shared memory, so that DataLoader workers,
        # persistent ones included, see set_epoch() and load_state_dict() made in the trainer
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._delivered: dict[str, int] | None = None  # state_dict() of the pass under way in this process
        self._featurizer: DeviceFeaturizer | None = None

    @property
    def labels(self) -> list[str]:
        """The stream's labels (label id = position): a mix's sources' labels merged by name."""
        return self.sources.labels

    @property
    def featurizer(self) -> DeviceFeaturizer | None:
        """With `featurize="device"`: the module that turns this stream's batches into the model's
        input on the trainer's device (`loaders.device_features.to_device`); else None."""
        if self.config.featurize != "device":
            return None
        if self._featurizer is None:
            self._featurizer = DeviceFeaturizer(self.features.spec)
        return self._featurizer

    @property
    def num_samples(self) -> int:
        """Samples in the split (all ranks together)."""
        return len(self.index)

    def __len__(self) -> int:
        """Steps this rank runs in the epoch set by `set_epoch` (`num_samples` counts samples)."""
        return self.steps(int(self._position[0]), int(self._position[1]))

    def set_epoch(self, epoch: int) -> None:
        """The epoch `iter()` delivers next, from its start; the epoch already set keeps a position
        restored by `load_state_dict`, so a resumed loop may call this as usual."""
        if epoch != int(self._position[0]):
            self._move(epoch, 0)

    def state_dict(self) -> dict[str, int]:
        """Where delivery stands: {"epoch", "consumed"}, the batches of the epoch's plan that all
        ranks together have taken once every rank has run the steps this one has (in a DataLoader
        worker: up to its next round of turns). Not a per-rank cursor: `load_state_dict` resumes it
        with any `world`. `plan(epoch).consumed(batch.step + 1, world, shift)` of the last batch
        a trainer took says the same, whatever the number of workers."""
        return (
            dict(self._delivered)
            if self._delivered
            else {"epoch": int(self._position[0]), "consumed": int(self._position[1])}
        )

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at (epoch, consumed): `iter()` then yields exactly this rank's share of the
        remaining batches, dealt to this stream's `world` (which may differ from the saver's)."""
        missing = {"epoch", "consumed"} - set(state)
        if missing:
            raise KeyError(f"PackedStream state {state!r} lacks {sorted(missing)}")
        if get_worker_info() is not None:  # torchdata restores each worker: its own position, unshared
            self._position = torch.zeros(2, dtype=torch.int64)
        self._move(int(state["epoch"]), int(state["consumed"]))

    def _move(self, epoch: int, consumed: int) -> None:
        self._position[0], self._position[1] = epoch, consumed
        self._delivered = None

    def __iter__(self) -> Iterator[PackedBatch]:
        """This rank's batches of the set epoch from the set step on; inside DataLoader worker w of
        k, the steps w, w+k, ... of those (each step once, in order once DataLoader interleaves)."""
        epoch, consumed = int(self._position[0]), int(self._position[1])
        worker = get_worker_info()
        turn, turns = (0, 1) if worker is None else (worker.id, worker.num_workers)
        if worker is not None and self.config.backend == "ray":
            raise RuntimeError(
                "PackedStream(backend='ray') inside DataLoader workers would start Ray in every worker: "
                "use DataLoader(stream, batch_size=None, num_workers=0) (Ray tasks already featurize in parallel), "
                "or backend='local' to featurize in the DataLoader workers"
            )
        plan = self.plan(epoch)
        if not 0 <= consumed <= plan.n_batches:
            raise ValueError(f"consumed {consumed} is not in 0..{plan.n_batches} (the batches of epoch {epoch})")
        self._delivered = {"epoch": epoch, "consumed": consumed}
        return self._iterate(plan, consumed, turn, turns)

    def _iterate(self, plan: EpochPlan, consumed: int, turn: int, turns: int) -> Iterator[PackedBatch]:
        start, shift = divmod(consumed, self.world)
        steps = plan.steps(self.world, consumed)
        for batch in self._batches(plan.epoch, min(start + turn, steps), turns, shift):
            next_step = min(batch.step - turn + turns, steps)
            self._delivered = {"epoch": plan.epoch, "consumed": plan.consumed(next_step, self.world, shift)}
            yield batch

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's plan (identical on every rank); the latest one is kept."""
        made = self._plan(epoch)
        return made.plan if self.mixed else made

    def _plan(self, epoch: int) -> EpochPlan | MixedPlan:
        if epoch not in self._plans:
            self._plans.clear()  # the former epoch's plan goes before the next is made, not after
            if not self.mixed:
                self._plans[epoch] = plan_epoch(
                    self._plan_index, self.config, epoch, self.index.key_hash, self.features.spec
                )
            else:
                indexes = [index.plan_index for index in self.sources.indexes]
                if self._measures is None:
                    self._measures = [sample_measure(index, self.config, self.features.spec) for index in indexes]
                hashes = [index.key_hash for index in self.sources.indexes]
                self._plans[epoch] = plan_mix(indexes, self.config, epoch, self._measures, hashes, self.features.spec)
        return self._plans[epoch]

    def mix(self, epoch: int) -> dict[str, dict]:
        """Per source of a mix, by name: its weight and what the epoch's plan gives it (samples,
        seconds, tokens, `share` in the `weight_by` measure, the pass it ends in; `loaders.mix`)."""
        if not self.mixed:
            return {}
        seconds = self.index.num_samples / self.index.sample_rate
        realised = realised_mix(self._plan(epoch), seconds, self.config.weight_by)
        weights = np.asarray(self.config.weights or [float(m.sum()) for m in self._measures], np.float64)
        weights = weights / weights.sum()  # the default: each source's own measure, one pass each
        return {name: {"weight": float(w)} | r for name, w, r in zip(self.sources.names, weights, realised)}

    def planned_ids(self, epoch: int) -> pa.Array:
        """`PackedBatch.sample_ids` of every sample the epoch delivers, all ranks together (a mix's
        small sources more than once; under balanced sampling each draw as `key#draw`): what an
        exactly-once check compares deliveries with."""
        if self.config.sampling == "balanced":
            plan = self.plan(epoch)
            keys = self.index.keys.take(pa.array(plan.sample))
            return pc.binary_join_element_wise(keys, pa.array(plan.draw.astype(str)), "#")
        if not self.mixed:
            return self.index.keys
        sample = self.plan(epoch).sample
        source = self.index.shard_source[self.index.shard[sample]].astype(str)
        return pc.binary_join_element_wise(pa.array(source), self.index.keys.take(pa.array(sample)), "/")

    def steps(self, epoch: int, consumed: int = 0) -> int:
        """Steps of this rank in `epoch` (equal on all ranks; varies with the epoch's scales), its
        first `consumed` batches taken before (on any world; the steps are then numbered from
        `consumed // world`)."""
        return self.plan(epoch).steps(self.world, consumed)

    def specs(self, epoch: int, start_step: int = 0, stride: int = 1, shift: int = 0) -> list[BatchSpec]:
        """Work items of this rank's steps start_step, start_step + stride, ... of `epoch`
        (`shift`: `consumed % world` of a resumed epoch, see `EpochPlan.batch_for`)."""
        plan = self.plan(epoch)
        steps = plan.steps(self.world, shift)
        if not 0 <= shift < self.world or not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step} is not in 0..{steps} (shift {shift}, world {self.world})")
        return [
            batch_spec(plan, self.index, plan.batch_for(step, self.rank, self.world, shift), step)
            for step in range(start_step, steps, stride)
        ]

    def epoch(
        self, epoch: int, start_step: int = 0, stride: int = 1, *, consumed: int | None = None
    ) -> Iterator[PackedBatch]:
        """This rank's batches of `epoch` from `start_step` on (every `stride`-th), in step order;
        `consumed=c` instead continues after the plan's first c batches, whatever number of ranks
        took them: this rank's share of the rest, from step c // world."""
        if consumed is None:
            return self._batches(epoch, start_step, stride, 0)
        if not 0 <= consumed <= self.plan(epoch).n_batches:
            raise ValueError(
                f"consumed {consumed} is not in 0..{self.plan(epoch).n_batches} (the batches of epoch {epoch})"
            )
        return self._batches(epoch, consumed // self.world + start_step, stride, consumed % self.world)

    def _batches(self, epoch: int, start_step: int, stride: int, shift: int) -> Iterator[PackedBatch]:
        specs = self.specs(epoch, start_step, stride, shift)
        arrays = self._assemble_ray(specs) if self.config.backend == "ray" else self._assemble_local(specs)
        stats = self.stats[epoch] = _empty_stats()
        plan = self.plan(epoch)
        stats["plan_pad_ratio"] = plan.pad_ratio
        allowed, failures = self.config.failures_allowed(sum(len(s.samples) for s in specs)), []
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
            failures += batch.failed
            if len(failures) > allowed:
                first = "; ".join(f"{f['shard']} {f['key']}: {f['reason']}" for f in failures[:3])
                raise FailureBudgetExceeded(
                    f"{self.features.split_dir}: {len(failures)} sample(s) failed in epoch {epoch}, over the "
                    f"budget of {allowed:g} (max_failed {self.config.max_failed:g}); first: {first}"
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
            pending = deque(reader.submit(read_audio, spec.reads, self.features) for spec in specs[:ahead])
            for i, spec in enumerate(specs):
                reads = pending.popleft().result()
                if i + ahead < len(specs):
                    pending.append(reader.submit(read_audio, specs[i + ahead].reads, self.features))
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
                if STORAGE_FAILURE in item:
                    raise StorageFailure(str(item[STORAGE_FAILURE][0]))
                yield {name: value[0] for name, value in item.items()}


def featurize_batch(spec: BatchSpec, features: FeatureConfig, reads: Reads | None = None) -> dict:
    """`assemble` with the stream's torch thread count, the caller's restored afterwards."""
    with torch_threads(features.stream.torch_threads):
        return assemble(spec, features, reads)


def _assemble_one(batch: dict, features: FeatureConfig) -> dict:
    """Ray Data task: one batch spec in, its arrays out. Tasks rather than an actor pool: Ray
    reuses its worker processes (imports and feature caches warm) from one epoch to the next,
    where a pool of actors would start afresh with every epoch's dataset. A `StorageFailure` comes
    back as data (Ray would deliver it wrapped, its type lost), to be raised by the consumer."""
    try:
        arrays = featurize_batch(BatchSpec.from_json(str(batch["spec"][0])), features)
    except StorageFailure as error:
        return {STORAGE_FAILURE: np.array([str(error)], dtype=object)}
    return {
        name: np.asarray([value]) if name != "meta" else np.array([value], dtype=object)
        for name, value in arrays.items()
    }


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
