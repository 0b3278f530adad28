"""`PackedStream`: shards in, fixed-shape `PackedBatch`es out, exactly once per epoch.

    stream = PackedStream("shards/demo/train", rows_per_batch=4, rank=rank, world=world)
    stream = PackedStream("shards/demo/train", StreamConfig(rows_per_batch=4, scales=SCALE_GRID))
    for batch in stream.epoch(e):           # or stream.epoch(e, start_step=k) to resume
        ...

Plan from metadata (`loaders.plan`), then featurize (`loaders.assemble`): `backend="ray"` runs
the assembly as Ray Data tasks streaming batches in step order; `backend="local"`
runs the very same function in-process.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from loaders.assemble import BatchSpec, FeatureConfig, assemble, batch_spec, to_batch
from loaders.batch import PackedBatch
from loaders.config import StreamConfig
from loaders.plan import EpochPlan, Index, plan_epoch
from shards.dataset import DATASET_FILE, ShardDataset
from shards.parallel import quiet_ray_data


class PackedStream:
    """Packed batches of one split of a shard set, for one trainer rank (see module docstring).

    shards: a split folder (`OUT/train`), or a shard-set folder with `subset` naming the split.
    config: a `StreamConfig`; keyword settings (its field names) build one or override its fields.
    rank / world: this data-parallel rank among `world`; every rank gets the same step count.
    """

    def __init__(
        self,
        shards: str | Path,
        config: StreamConfig | None = None,
        *,
        subset: str | None = None,
        rank: int = 0,
        world: int = 1,
        split: tuple[int, int] | None = None,
        **settings,
    ):
        if config is not None and not isinstance(config, StreamConfig):
            raise TypeError(f"config must be a StreamConfig, got {config!r}: pass settings by name (rows_per_batch=...)")
        self.config = replace(config, **settings) if config is not None else StreamConfig(**settings)
        if split is not None:
            warnings.warn("PackedStream(split=(rank, world)) is renamed: pass rank= and world=", DeprecationWarning, stacklevel=2)
            rank, world = split
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} and world {world} must satisfy 0 <= rank < world")
        self.rank, self.world = rank, world
        self.dataset, self.subset = _open(Path(shards), subset)
        stats = self.dataset.fbank_stats
        if not stats:
            raise ValueError(f"{self.dataset.root / DATASET_FILE} has no fbank statistics: rebuild it with make_shards")
        self.features = FeatureConfig(
            stream=self.config,
            split_dir=str(self.dataset.root / self.subset),
            sample_rate=self.dataset.sample_rate,
            num_classes=len(self.dataset.labels),
            multi_label=bool(self.dataset.meta.get("multi_label")),
            mean=stats["mean"],
            std=stats["std"],
        )
        self.dataset.shard_paths(self.subset)  # a missing shard is an error now, not mid-epoch
        table = self.dataset.index(self.subset)
        self.index = {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in ("key", "shard", "label_ids", "xxh3_64")}
        for name in ("offset", "nbytes", "num_samples", "sample_rate"):
            self.index[name] = table.column(name).to_numpy()
        shard_id = {name: i for i, name in enumerate(self.dataset.meta["splits"][self.subset]["shards"])}
        shard_ids = np.array([shard_id[s] for s in self.index["shard"]], dtype=np.int64)
        self._plan_index = Index(self.index["key"].astype(str), shard_ids, self.index["num_samples"], self.index["sample_rate"])
        self._key_hash = self._plan_index.key_hash
        self._plans: dict[int, EpochPlan] = {}
        self.stats: dict[int, dict] = {}

    @property
    def labels(self) -> list[str]:
        return self.dataset.labels

    @property
    def num_samples(self) -> int:
        """Samples in the split (all ranks together)."""
        return len(self.index["key"])

    def __len__(self) -> int:
        return self.num_samples

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's plan (identical on every rank); the latest one is kept."""
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self._plan_index, self.config, epoch, self._key_hash)}
        return self._plans[epoch]

    def steps(self, epoch: int) -> int:
        """Batches this rank receives in `epoch` (equal on all ranks; varies with the epoch's scales)."""
        return self.plan(epoch).steps(self.world)

    def specs(self, epoch: int, start_step: int = 0) -> list[BatchSpec]:
        plan = self.plan(epoch)
        if not 0 <= start_step <= plan.steps(self.world):
            raise ValueError(f"start_step {start_step} is not in 0..{plan.steps(self.world)}")
        return [
            batch_spec(plan, self.index, plan.batch_for(step, self.rank, self.world), step)
            for step in range(start_step, plan.steps(self.world))
        ]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[PackedBatch]:
        """This rank's batches of `epoch` from `start_step` on, in step order."""
        specs = self.specs(epoch, start_step)
        arrays = self._assemble_ray(specs) if self.config.backend == "ray" else (assemble(s, self.features) for s in specs)
        stats = self.stats[epoch] = _empty_stats()
        plan = self.plan(epoch)
        stats["plan_pad_ratio"] = plan.pad_ratio
        waited = time.perf_counter()
        for item in arrays:
            batch = to_batch(item, self.features)
            stats["data_wait_s"] += time.perf_counter() - waited
            _count(stats, batch)
            for failure in batch.failed:
                print(f"PackedStream: {failure['shard']} {failure['key']}: {failure['reason']} (left as padding)", file=sys.stderr)
            yield batch
            waited = time.perf_counter()

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


def _assemble_one(batch: dict, features: FeatureConfig) -> dict:
    """Ray Data task: one batch spec in, its arrays out. Tasks rather than an actor pool: Ray
    reuses its worker processes (imports and feature caches warm) from one epoch to the next,
    where a pool of actors would start afresh with every epoch's dataset."""
    arrays = assemble(BatchSpec.from_json(str(batch["spec"][0])), features)
    return {name: np.asarray([value]) if name != "meta" else np.array([value], dtype=object) for name, value in arrays.items()}


def _open(path: Path, subset: str | None) -> tuple[ShardDataset, str]:
    if (path / DATASET_FILE).is_file():
        return ShardDataset(path), subset or "train"
    if (path.parent / DATASET_FILE).is_file():
        if subset not in (None, path.name):
            raise ValueError(f"{path} is split {path.name!r} but subset={subset!r} was asked for")
        return ShardDataset(path.parent), path.name
    raise FileNotFoundError(f"{path} is neither a shard set nor a split folder of one (no {DATASET_FILE} there or above)")


def _empty_stats() -> dict:
    return {"batches": 0, "padding_batches": 0, "samples": 0, "tokens": 0, "slots": 0, "cut_tokens": 0,
            "failed": 0, "data_wait_s": 0.0, "pad_ratio": 0.0, "cut_ratio": 0.0}


def _count(stats: dict, batch: PackedBatch) -> None:
    stats["batches"] += 1
    stats["padding_batches"] += batch.is_padding
    stats["samples"] += batch.num_samples
    stats["tokens"] += batch.real_tokens
    stats["slots"] += batch.segment_ids.numel()
    stats["cut_tokens"] += batch.cut_tokens
    stats["failed"] += len(batch.failed)
    stats["pad_ratio"] = 1.0 - stats["tokens"] / stats["slots"]
    stats["cut_ratio"] = stats["cut_tokens"] / max(stats["tokens"] + stats["cut_tokens"], 1)
