"""An epoch's whole packing plan, made from the index alone before any audio is read.

1. Each sample's scale C comes from a hash of (seed, epoch, key): the same on every rank and
   worker, whatever the order or number of either.
2. Shards are shuffled (seed, epoch) and taken in groups of at least `buffer` samples; the
   samples of a group are shuffled, and the groups go through one packer one after another.
   The packer carries its pending samples from a group into the next, so only the epoch's end
   leaves part-filled rows, and reads stay local: a sample waits at most `max_wait + buffer`
   arrivals (`loaders.pack`), so a row's samples come from a few neighbouring shards.
3. Each row belongs to the group being read when it closed (the latest sample read by then); rows
   are shuffled within their group (packing order sorts rows by length otherwise), then all rows
   are cut into batches of `rows_per_batch`.
4. Batches are dealt round-robin to ranks; ranks short of a batch get an all-padding one, so
   every rank runs the same number of steps and no sample is dropped or repeated. A position in
   the epoch is the number of batches consumed (all ranks together), so an epoch resumed on
   another number of ranks deals exactly the remaining batches to them (`EpochPlan.batch_for`).

Recipe options: `sampling="balanced"` plans an epoch of weighted draws with replacement instead
of the samples (`loaders.balance`; each draw keyed by its index where a sample is keyed by its
key), and `mixup` gives each planned sample a keyed partner (`loaders.mixup`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from loaders.balance import balanced_draws, draw_keys
from loaders.config import StreamConfig
from loaders.cuts import random_windows
from loaders.dropout import dropped_tokens
from loaders.feature_spec import FeatureSpec
from loaders.keyed import keyed_uniform
from loaders.mixup import mixup_partners
from loaders.pack import Packing, pack
from loaders.tokens import TokenCounts, clip_counts

_SALT_SCALE, _SALT_ORDER = 0x5CA1E, 0x0DE5
_CHUNK = 1 << 16  # samples per step of plan_epoch's per-sample arithmetic


@dataclass(frozen=True)
class Index:
    """What planning needs from `index.parquet`, as arrays (one entry per sample)."""

    keys: np.ndarray
    shard: np.ndarray  # position in the shard list
    num_samples: np.ndarray
    sample_rate: np.ndarray
    weight: np.ndarray | None = None  # class-balance weight of each sample (balanced sampling)

    @property
    def key_hash(self) -> np.ndarray:
        return fnv1a64(self.keys)


@dataclass(frozen=True)
class EpochPlan:
    """Samples in delivery order (batch by batch, row by row, by offset) and their layout."""

    epoch: int
    sample: np.ndarray  # index position
    batch: np.ndarray
    row: np.ndarray  # row within its batch
    offset: np.ndarray  # first token inside the row
    tokens: np.ndarray
    cut: np.ndarray
    scale: np.ndarray
    batch_starts: np.ndarray  # samples of batch b: [batch_starts[b], batch_starts[b + 1])
    pad_ratio: float
    dropped: np.ndarray  # tokens that token dropout leaves out (the row holds `tokens`, the kept ones)
    window_start: np.ndarray  # first frame (at the sample's C) of its random window; 0 without random cuts
    draw: np.ndarray | None = None  # balanced sampling: each planned sample's draw index (else None)
    partner: np.ndarray | None = None  # mixup: each planned sample's partner (index position; -1: unmixed)

    @property
    def n_batches(self) -> int:
        return len(self.batch_starts) - 1

    def steps(self, world: int, consumed: int = 0) -> int:
        """Steps every rank runs in the epoch (the same for all ranks by construction) when its
        first `consumed` batches were delivered before (on any number of ranks): the rank's steps
        are then numbered from `consumed // world` (see `batch_for`)."""
        return -(-(self.n_batches - consumed % world) // world)

    def batch_for(self, step: int, rank: int, world: int, consumed: int = 0) -> int | None:
        """Global batch of a rank's step; None for the all-padding filler at the epoch's end.
        The batches after the first `consumed` are dealt round-robin, step s of rank r taking
        batch s * world + r + consumed % world: from step consumed // world on, each remaining
        batch goes to exactly one rank, whatever the world the first `consumed` were dealt to."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        first, shift = divmod(consumed, world)
        if not first <= step < self.steps(world, consumed):
            raise IndexError(f"step {step} is not in {first}..{self.steps(world, consumed) - 1}")
        batch = step * world + rank + shift
        return batch if batch < self.n_batches else None

    def consumed(self, next_step: int, world: int, shift: int = 0) -> int:
        """Batches of the plan delivered once every rank has run the steps before `next_step`
        (`shift`: `consumed % world` of the position the epoch was resumed at, else 0)."""
        return min(self.n_batches, next_step * world + shift)


def plan_epoch(
    index: Index,
    config: StreamConfig,
    epoch: int,
    key_hash: np.ndarray | None = None,
    features: FeatureSpec | None = None,
) -> EpochPlan:
    """The plan of one epoch (see the module docstring); a pure function of index, config and
    epoch (of the config, only the packing and feature settings matter: not the backend).
    `features`: how the stream featurizes (its fixed length and frame shift count here too).
    Balanced sampling plans the epoch's draws as samples of their own (keyed by `draw_keys`), then
    names each by the index position it drew (`sample`) and its draw index (`draw`)."""
    key_hash = index.key_hash if key_hash is None else key_hash
    num_samples, sample_rate, shard, drawn = index.num_samples, index.sample_rate, index.shard, None
    if config.sampling == "balanced":
        drawn = balanced_draws(index.weight, config.seed, epoch)
        num_samples, sample_rate, shard = num_samples[drawn], sample_rate[drawn], np.asarray(shard)[drawn]
        key_hash = draw_keys(len(drawn), config.seed, epoch)
    per = sample_tokens(num_samples, sample_rate, key_hash, config, epoch, features)
    plan = plan_tokens(per, shard, config, epoch, key_hash, len(index.num_samples))
    if drawn is None:
        return plan
    return replace(plan, sample=drawn[plan.sample].astype(np.int32), draw=plan.sample)


class SampleTokens(NamedTuple):
    """Per sample, what its features will be this epoch (see `sample_tokens`)."""

    scale: np.ndarray
    tokens: np.ndarray  # in its row: after the cap, the random window and token dropout
    cut: np.ndarray  # removed by the cap (max_frames, row capacity) alone
    dropped: np.ndarray
    start: np.ndarray  # first frame of the random window

    @classmethod
    def counts(cls, tokens: ArrayLike) -> SampleTokens:
        """Token counts alone: C = 1, nothing cut, dropped or windowed (a map-style dataset's)."""
        tokens = np.asarray(tokens)
        zeros = np.zeros(len(tokens), np.int32)
        return cls(np.ones(len(tokens)), tokens, zeros, zeros, zeros)


def sample_tokens(
    num_samples: np.ndarray,
    sample_rate: np.ndarray,
    key_hash: np.ndarray,
    config: StreamConfig,
    epoch: int,
    features: FeatureSpec | None = None,
) -> SampleTokens:
    """Every sample's C drawn from (seed, epoch, key), its tokens at C under the cap, then its
    random window (`loaders.cuts`) and token dropout (`loaders.dropout`), each keyed the same way."""
    if config.random_cut and features is not None and features.fixed_frames is not None:
        raise ValueError("random_cut needs clips at their own length: the fixed-length mode (fixed_frames) has none")
    scales = np.asarray(config.scales, dtype=np.float64)
    n = len(key_hash)
    per = SampleTokens(np.empty(n), *(np.zeros(n, np.int32) for _ in range(4)))
    for first in range(0, n, _CHUNK):  # per-sample arithmetic a chunk at a time: its temporaries stay small
        part = slice(first, first + _CHUNK)
        pick = (keyed_uniform(key_hash[part], config.seed, epoch, _SALT_SCALE) * len(scales)).astype(np.int64)
        per.scale[part] = scales[np.minimum(pick, len(scales) - 1)]
        counts = counts_at(num_samples[part], sample_rate[part], per.scale[part], config, features)
        per.tokens[part], per.cut[part] = counts.tokens, counts.cut
        if config.random_cut:
            per.tokens[part], per.start[part] = random_windows(counts, key_hash[part], config, epoch)
        if config.token_dropout or config.token_dropout_max:
            per.dropped[part] = dropped_tokens(per.tokens[part], key_hash[part], config, epoch)
            per.tokens[part] -= per.dropped[part]
    return per


def counts_at(
    num_samples: np.ndarray,
    sample_rate: np.ndarray,
    scale: np.ndarray | float,
    config: StreamConfig,
    features: FeatureSpec | None = None,
) -> TokenCounts:
    """Frames, tokens and cut of clips at resolution `scale` under the config's crop and row
    capacity (and the features' fixed length and frame shift)."""
    return clip_counts(
        num_samples,
        sample_rate,
        np.broadcast_to(scale, np.shape(num_samples)),
        compression=config.compression,
        max_frames=config.max_frames,
        capacity=config.max_tokens,
        **(features.framing if features else {}),
    )


def plan_tokens(
    per: SampleTokens | ArrayLike,
    shard: np.ndarray,
    config: StreamConfig,
    epoch: int,
    key_hash: np.ndarray | None = None,
    pool: int | None = None,
) -> EpochPlan:
    """Steps 2-4 of the module docstring from `sample_tokens`' result, or token counts alone
    (`key_hash`, `pool`: for mixup, see `plan_arrivals`). `PackingSampler` plans a map-style
    dataset with it, each sample its own shard.
    Per-sample arrays are int32 and freed as soon as used: every rank plans the whole epoch."""
    per = per if isinstance(per, SampleTokens) else SampleTokens.counts(per)
    rng = np.random.default_rng([config.seed, epoch, _SALT_ORDER])
    arrival, group = _arrival_order(np.asarray(shard), config, rng)
    return plan_arrivals(per, arrival, group, config, epoch, rng, key_hash, pool)


def plan_arrivals(
    per: SampleTokens,
    arrival: np.ndarray,
    group: np.ndarray,
    config: StreamConfig,
    epoch: int,
    rng: np.random.Generator,
    key_hash: np.ndarray | None = None,
    pool: int | None = None,
) -> EpochPlan:
    """Steps 2-4 from the order samples reach the packer: `arrival` (sample ids, by which `per`'s
    arrays and `key_hash` are indexed; an id may arrive more than once) and the `group` of each
    arrival (rows are shuffled within the group being read when they closed). With mixup, each
    planned sample's partner is drawn from `pool` index positions, keyed by its `key_hash`
    (`loaders.mixup`)."""
    if config.mixup and (key_hash is None or not pool):
        raise ValueError("mixup needs the planned samples' key hashes and a pool of partners")
    scale, tokens, cut, dropped, start = per
    arriving = tokens[arrival]
    total = int(arriving.sum(dtype=np.int64))
    layout = Packing.from_rows(
        arriving,
        pack(arriving, config.max_tokens, config.packing, config.buffer, max_per_row=config.max_per_row),
        config.max_tokens,
    )
    del arriving
    by_row, row_starts = layout.members()  # arrival slots row by row, in arrival (= offset) order
    read = np.maximum.accumulate(by_row[row_starts[1:] - 1]) if layout.n_rows else row_starts[1:]
    closed_in = group[read]  # rows are numbered as made: the group being read when each row closed
    del group, read
    shuffle_key = rng.random(layout.n_rows) if config.shuffle else np.zeros(layout.n_rows)
    row_order = np.lexsort((shuffle_key, closed_in))  # rows in delivery order
    lengths = np.diff(row_starts)[row_order]
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # of each row, once reordered
    slots = np.repeat(row_starts[row_order] - first, lengths)
    slots += np.arange(len(slots))
    slots = by_row[slots]  # arrival slots in delivery order
    del by_row
    sample = arrival[slots].astype(np.int32)  # every count here is far below 2^31
    offset = layout.offset[slots].astype(np.int32)
    del arrival, slots, layout
    row = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    batch = row // config.rows_per_batch
    row -= batch * config.rows_per_batch  # row within its batch
    n_batches = -(-len(lengths) // config.rows_per_batch)
    partner = None
    if config.mixup:
        partner = mixup_partners(key_hash[sample], pool, config, epoch)
    capacity_total = n_batches * config.rows_per_batch * config.max_tokens
    return EpochPlan(
        epoch=epoch,
        sample=sample,
        batch=batch,
        row=row,
        offset=offset,
        tokens=tokens[sample].astype(np.int32, copy=False),
        cut=cut[sample].astype(np.int32, copy=False),
        scale=scale[sample],
        batch_starts=np.searchsorted(batch, np.arange(n_batches + 1)),
        pad_ratio=1.0 - total / capacity_total if capacity_total else 0.0,
        dropped=dropped[sample].astype(np.int32, copy=False),
        window_start=start[sample].astype(np.int32, copy=False),
        partner=partner,
    )


def _arrival_order(shard: np.ndarray, config: StreamConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Index positions in the order the packer takes them (shard group by shard group, each group
    shuffled) and the group of each arrival."""
    n_shards = int(shard.max()) + 1 if len(shard) else 0
    shard_order = rng.permutation(n_shards) if config.shuffle else np.arange(n_shards)
    rank_of_shard = np.empty(n_shards, np.int64)
    rank_of_shard[shard_order] = np.arange(n_shards)
    arrival = np.argsort(rank_of_shard[shard], kind="stable").astype(np.int32)  # samples shard by shard, in order
    ends = _group_ends(np.bincount(shard, minlength=n_shards)[shard_order], config.buffer)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    if config.shuffle:
        for start, end in zip(starts, ends):
            arrival[start:end] = arrival[start:end][rng.permutation(end - start)]
    return arrival, np.repeat(np.arange(len(ends), dtype=np.int32), ends - starts)


def _group_ends(shard_sizes: np.ndarray, buffer: int) -> np.ndarray:
    """Where each group of whole shards (in order) ends, in samples: a group closes once it holds
    at least `buffer` samples, the last one with the last shard. One step per group, not per shard."""
    total = np.cumsum(shard_sizes)
    ends, shard = [], 0
    while shard < len(shard_sizes):
        before = total[shard - 1] if shard else 0
        shard = min(int(np.searchsorted(total, before + buffer, side="left")), len(shard_sizes) - 1) + 1
        ends.append(int(total[shard - 1]))
    return np.asarray(ends, dtype=np.int64)


def fnv1a64(keys) -> np.ndarray:
    """64-bit FNV-1a of each key's UTF-8 bytes, read straight from Arrow's string buffers (a key's
    hash is its own, whatever other keys stand beside it)."""
    from loaders._hash_numba import fnv1a64_spans

    strings = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(keys, dtype=str))
    strings = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    if not pa.types.is_string(strings.type) and not pa.types.is_large_string(strings.type):
        strings = strings.cast(pa.string())
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(strings.buffers()[1], width)[strings.offset : strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], np.uint8) if strings.buffers()[2] else np.zeros(0, np.uint8)
    return fnv1a64_spans(data, offsets)
