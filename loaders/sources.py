"""The shard sets a stream reads, opened and checked together: one split of one set, or the
sources of a mix (`loaders.mix`), whose labels are merged by name into one label list.

A mix needs one sample rate and one kind of label (single or multi) in all its sources, and an
fbank normalisation for all: the sources' statistics pooled, each weighted by its samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from loaders.assemble import FeatureConfig
from loaders.config import StreamConfig
from loaders.feature_spec import FeatureSpec
from loaders.index import StreamIndex
from shards.dataset import DATASET_FILE, ShardDataset
from shards.location import Location


@dataclass(frozen=True, eq=False)
class Sources:
    """The opened sources: each one's shard set and split, index and name; the labels (merged in
    order of first appearance, or as asked), each source's label ids in them, and the index the
    stream reads from (the sources joined, shard and label ids renumbered)."""

    datasets: list[ShardDataset]
    splits: list[str]
    indexes: list[StreamIndex]
    names: list[str]
    labels: list[str]
    label_maps: list[np.ndarray]
    index: StreamIndex

    @property
    def split_dirs(self) -> list[str]:
        return [(d.root / s).url for d, s in zip(self.datasets, self.splits)]

    def features(self, config: StreamConfig, features: FeatureSpec | dict | None = None) -> FeatureConfig:
        """What the workers need: the config, where each source is, and how to featurize:
        `features` (e.g. a checkpoint's) with the sources' label type, or the sources' own
        statistics (a mix's pooled, each source weighted by its samples) with the `FeatureSpec`
        settings in a dict `features` (e.g. a training recipe)."""
        first = self.datasets[0]
        multi_label = bool(first.meta.get("multi_label"))
        if not isinstance(features, FeatureSpec):
            spec = FeatureSpec.of_shards(first.meta, config, **(self._pooled_stats() | (features or {})))
        elif features.sample_rate != first.sample_rate:
            raise ValueError(
                f"features at {features.sample_rate} Hz, but {first.root} holds audio at {first.sample_rate} Hz"
            )
        else:
            spec = replace(features, multi_label=multi_label)
        return FeatureConfig(
            stream=config,
            split_dir=self.split_dirs[0],
            num_classes=len(self.labels),
            spec=spec,
            more_split_dirs=tuple(self.split_dirs[1:]),
        )

    def _pooled_stats(self) -> dict[str, float]:
        """The fbank mean and std of all sources' samples together (nothing to pool for one source)."""
        if len(self.datasets) == 1:
            return {}
        sizes = np.array([len(index) for index in self.indexes], np.float64)
        stats = [d.fbank_stats for d in self.datasets]
        share = sizes / sizes.sum() if sizes.sum() else np.full(len(sizes), 1 / len(sizes))
        mean = float(sum(w * s["mean"] for w, s in zip(share, stats)))
        second = float(sum(w * (s["std"] ** 2 + s["mean"] ** 2) for w, s in zip(share, stats)))
        return {"mean": mean, "std": float(np.sqrt(max(second - mean**2, 0.0)))}

    @property
    def label_map(self) -> dict[str, dict[str, int]]:
        """Per source: its own label -> the stream's label id (what a checkpoint records)."""
        return {name: dict(zip(d.labels, m.tolist())) for name, d, m in zip(self.names, self.datasets, self.label_maps)}


def open_sources(
    shards: str | Path | Location | Sequence[str | Path | Location], split: str | None, labels: Sequence[str] | None
) -> Sources:
    """Open every source, check they can be mixed, read and join their indexes. `labels`: the
    label list to map into (e.g. a mixed training stream's, for one source's validation split)."""
    many = [shards] if isinstance(shards, (str, Path, Location)) else list(shards)
    if not many:
        raise ValueError("PackedStream needs at least one shard set")
    opened = [_open(Location.of(s), split) for s in many]
    datasets, splits = [d for d, _ in opened], [s for _, s in opened]
    first = datasets[0]
    for dataset in datasets:
        if not dataset.fbank_stats:
            raise ValueError(f"{dataset.root / DATASET_FILE} has no fbank statistics: rebuild it with make_shards")
        for fact in ("sample_rate", "multi_label"):
            if dataset.meta.get(fact) != first.meta.get(fact):
                raise ValueError(
                    f"{dataset.root} has {fact} {dataset.meta.get(fact)} where {first.root} has {first.meta.get(fact)}: "
                    "the sources of a mix must agree"
                )
    merged = list(labels) if labels is not None else list(dict.fromkeys(name for d in datasets for name in d.labels))
    position = {label: i for i, label in enumerate(merged)}
    label_maps = []
    for dataset in datasets:
        unknown = [label for label in dataset.labels if label not in position]
        if unknown:
            raise ValueError(f"{dataset.root} has labels {unknown[:5]} that the stream's labels lack")
        label_maps.append(np.array([position[label] for label in dataset.labels], dtype=np.int64))
    for dataset, split in opened:
        dataset.shard_locations(split)  # a missing shard is an error now, not mid-epoch
    indexes = [StreamIndex.read(d, s) for d, s in opened]
    as_read = len(indexes) == 1 and list(first.labels) == merged
    index = indexes[0] if as_read else StreamIndex.joined(indexes, label_maps)
    names = [d.root.name for d in datasets]
    if len(set(names)) < len(names):
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    return Sources(datasets, splits, indexes, names, merged, label_maps, index)


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
