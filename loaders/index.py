"""`StreamIndex`: a split's `index.parquet` as the columns a rank holds, lean at millions of samples.

Every rank plans the whole epoch, so every rank holds the whole index. Python objects per sample
(a str per key and shard, a list per label set, an int per checksum) cost ~1 GiB a rank at 1 M
samples; here keys stay one Arrow string array, shards and labels become integer ids, numbers
numpy arrays, and only the columns the stream uses are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loaders.plan import Index, fnv1a64
from shards.dataset import INDEX_FILE, ShardDataset

COLUMNS = ("key", "shard", "offset", "nbytes", "num_samples", "sample_rate", "label_ids", "xxh3_64", "weight")


@dataclass(frozen=True, eq=False)
class StreamIndex:
    """One entry per sample, in index order; `shard` ids are positions in `shard_names` (the
    split's shard list in dataset.json); the label ids of sample i are
    `label_values[label_starts[i]:label_starts[i + 1]]`; `xxh3_64` is None for a shard set made
    before checksums; `key_hash` is `fnv1a64` of each key (planning and the exactly-once check);
    `weight` each sample's class-balance weight (`shards.weights`), None for a shard set made before
    weights (balanced sampling refuses it)."""

    keys: pa.StringArray
    shard_names: tuple[str, ...]
    shard: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray
    num_samples: np.ndarray
    sample_rate: np.ndarray
    label_starts: np.ndarray
    label_values: np.ndarray
    xxh3_64: np.ndarray | None
    key_hash: np.ndarray
    shard_source: np.ndarray | None = None  # a mix's source of each shard (None: one source)
    weight: np.ndarray | None = None

    @classmethod
    def read(cls, dataset: ShardDataset, split: str) -> StreamIndex:
        """The split's index, its shards named by dataset.json's list (an unlisted one is an error)."""
        table = dataset.index(split, columns=list(COLUMNS))
        where = dataset.root / split / INDEX_FILE
        shard_names = tuple(dataset.meta["splits"][split]["shards"])
        shards = pc.dictionary_encode(table.column("shard")).combine_chunks()
        position = {name: i for i, name in enumerate(shard_names)}
        unlisted = [name for name in shards.dictionary.to_pylist() if name not in position]
        if unlisted:
            raise ValueError(
                f"{where} names shards that {dataset.root / 'dataset.json'} does not list for {split!r}: {unlisted[:5]}"
            )
        shard_of_code = np.array([position[name] for name in shards.dictionary.to_pylist()], dtype=np.int32)
        labels = table.column("label_ids").combine_chunks()
        checksums = table.column("xxh3_64")
        weights = table.column("weight")
        for name, column in (("an xxh3_64 checksum", checksums), ("a weight", weights)):
            if 0 < column.null_count < len(column):
                raise ValueError(f"{where}: {column.null_count} of {len(column)} samples lack {name}")
        keys = table.column("key").combine_chunks()
        index = cls(
            keys=keys,
            shard_names=shard_names,
            shard=shard_of_code[shards.indices.to_numpy(zero_copy_only=False)]
            if len(shards)
            else np.zeros(0, np.int32),
            offset=_numbers(table, "offset"),
            nbytes=_numbers(table, "nbytes"),
            num_samples=_numbers(table, "num_samples"),
            sample_rate=_numbers(table, "sample_rate"),
            label_starts=labels.offsets.to_numpy().astype(np.int64),
            label_values=labels.values.to_numpy(zero_copy_only=False),
            xxh3_64=None if checksums.null_count else _numbers(table, "xxh3_64"),
            key_hash=fnv1a64(keys),
            weight=None if weights.null_count or not len(weights) else _numbers(table, "weight"),
        )
        del table, shards, labels, checksums, weights
        pa.default_memory_pool().release_unused()  # the Parquet decode and the shard names: no longer held
        return index

    @classmethod
    def joined(cls, indexes: list[StreamIndex], label_maps: list[np.ndarray]) -> StreamIndex:
        """The sources of a mix as one index, in order: shard ids and names run on from source to
        source (`shard_source` says whose), label ids become `label_maps[i][id]` (merged ids)."""
        shard_starts = np.cumsum([0] + [len(index.shard_names) for index in indexes])
        label_starts = np.cumsum([0] + [len(index.label_values) for index in indexes])
        checksums = [index.xxh3_64 for index in indexes]
        weights = [index.weight for index in indexes]
        return cls(
            keys=pa.concat_arrays([index.keys for index in indexes]),
            shard_names=tuple(name for index in indexes for name in index.shard_names),
            shard=np.concatenate([index.shard + start for index, start in zip(indexes, shard_starts)]),
            offset=np.concatenate([index.offset for index in indexes]),
            nbytes=np.concatenate([index.nbytes for index in indexes]),
            num_samples=np.concatenate([index.num_samples for index in indexes]),
            sample_rate=np.concatenate([index.sample_rate for index in indexes]),
            label_starts=np.concatenate(
                [[0]] + [index.label_starts[1:] + start for index, start in zip(indexes, label_starts)]
            ).astype(np.int64),
            label_values=np.concatenate([m[index.label_values] for index, m in zip(indexes, label_maps)]),
            xxh3_64=None if any(c is None for c in checksums) else np.concatenate(checksums),
            key_hash=np.concatenate([index.key_hash for index in indexes]),
            shard_source=np.repeat(np.arange(len(indexes), dtype=np.int16), np.diff(shard_starts)),
            weight=None if any(w is None for w in weights) else np.concatenate(weights),
        )

    def source_of(self, position: int) -> int:
        """The mix source of the sample at `position` (0 for a single source)."""
        return 0 if self.shard_source is None else int(self.shard_source[self.shard[position]])

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def plan_index(self) -> Index:
        """What `loaders.plan` needs (shard ids, lengths, rates; keys only through `key_hash`)."""
        return Index(self.keys, self.shard, self.num_samples, self.sample_rate, self.weight)

    def label_ids(self, position: int) -> tuple[int, ...]:
        return tuple(self.label_values[self.label_starts[position] : self.label_starts[position + 1]].tolist())

    def __getitem__(self, name: str) -> np.ndarray:
        """A column by its index.parquet name, as numpy (`key` and `shard` as str arrays, made on
        each call: for inspection and tests, not for a loop over samples)."""
        if name == "key":
            return np.asarray(self.keys.to_numpy(zero_copy_only=False), dtype=str)
        if name == "shard":
            return np.asarray(self.shard_names, dtype=str)[self.shard]
        if name in ("offset", "nbytes", "num_samples", "sample_rate"):
            return getattr(self, name)
        raise KeyError(
            f"{name!r}: StreamIndex columns by name are key, shard, offset, nbytes, num_samples, sample_rate"
        )


def _numbers(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    return column.combine_chunks().to_numpy() if column.num_chunks != 1 else column.chunk(0).to_numpy()
