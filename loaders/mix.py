"""The plan of an epoch drawn from several sources at set weights, from their indexes alone.

- Every source runs its own passes: pass p of source i is its samples in the order a single-source
  epoch would take them (shards shuffled, then samples within groups of shards), shuffled by
  (seed, i, p) and by nothing else. The passes follow one another into an endless sequence, so
  within a pass each sample comes exactly once, and a used-up source simply starts its next pass:
  a small source repeats, none is ever dropped.
- The epoch rule: an epoch is as long as one pass over all the sources together, measured as the
  weights are (`weight_by`: samples, seconds of audio, or tokens); source i takes its weight's
  share of it, the next stretch of its sequence. With the weights in proportion to the sources'
  sizes (the default) an epoch is one pass of every source, exactly the concatenated data set;
  other weights change the mix, never the epoch's length, so schedules in epochs keep their
  meaning. Where source i stands at the start of epoch e is e times its share: a closed form, so
  the plan stays a pure function of (indexes, config, epoch), computed from that epoch alone.
- A sample is taken while the middle of its measure lies before the share's end (rounding to the
  nearest sample), so float error never moves a boundary; with weight_by="tokens" a sample counts
  its tokens averaged over the configured scales (its C is drawn per epoch, after the mix is set).
- The sources' stretches are interleaved evenly (each sample at the fraction of its source's
  stretch it stands at) and packed as one stream: rows mix sources, pad stays what packing
  gives one source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from loaders.config import StreamConfig
from loaders.feature_spec import FeatureSpec
from loaders.plan import EpochPlan, Index, _arrival_order, counts_at, plan_arrivals, sample_tokens

_SALT_PASS, _SALT_MIX = 0x9A55, 0x313C


@dataclass(frozen=True)
class MixedPlan:
    """An epoch's plan over the concatenated sources (sample ids: `starts[i]` + position in source
    i), the source of each planned sample, and the passes each source's stretch spans."""

    plan: EpochPlan
    starts: np.ndarray  # first sample id of each source, and the total
    source: np.ndarray  # of each planned sample, in plan order
    passes: list[tuple[int, int]]  # per source: (pass at the epoch's start, pass at its end)


def sample_measure(index: Index, config: StreamConfig, features: FeatureSpec | None = None) -> np.ndarray:
    """What one sample weighs under `config.weight_by` (float64): 1, its seconds, or its tokens
    averaged over `config.scales`. The same every epoch."""
    n = len(index.num_samples)
    if config.weight_by == "samples":
        return np.ones(n)
    if config.weight_by == "duration":
        return np.asarray(index.num_samples, np.float64) / np.asarray(index.sample_rate, np.float64)
    total = np.zeros(n)
    for scale in config.scales:
        total += counts_at(index.num_samples, index.sample_rate, scale, config, features).tokens
    return total / len(config.scales)


def shares(measures: list[np.ndarray], weights: tuple[float, ...] | None) -> np.ndarray:
    """The measure each source takes per epoch: one pass of all sources together, split by weight
    (None: by the sources' own measure, i.e. one pass each)."""
    totals = np.array([float(m.sum()) for m in measures])
    if weights is None:
        return totals
    if len(weights) != len(measures):
        raise ValueError(f"{len(weights)} weights for {len(measures)} sources")
    weights = np.asarray(weights, np.float64)
    return weights / weights.sum() * totals.sum()


def plan_mix(
    indexes: list[Index],
    config: StreamConfig,
    epoch: int,
    measures: list[np.ndarray] | None = None,
    key_hashes: list[np.ndarray] | None = None,
    features: FeatureSpec | None = None,
) -> MixedPlan:
    """The epoch's plan over all sources (module docstring); `measures` and `key_hashes`, per
    source, may be passed in when already made (`sample_measure`, `Index.key_hash`); `features`:
    how the stream featurizes (its fixed length and frame shift count in the tokens)."""
    measures = measures or [sample_measure(index, config, features) for index in indexes]
    key_hashes = key_hashes or [index.key_hash for index in indexes]
    empty = [i for i, index in enumerate(indexes) if not len(index.num_samples)]
    if empty:
        raise ValueError(f"source {empty[0]} has no samples: a mix needs samples in every source")
    per_epoch = shares(measures, config.weights)
    starts = np.concatenate([[0], np.cumsum([len(index.num_samples) for index in indexes])])
    ids, passes = [], []
    for i, (index, measure) in enumerate(zip(indexes, measures)):
        taken, spans = stretch(index, measure, config, i, epoch * per_epoch[i], (epoch + 1) * per_epoch[i])
        ids.append(taken + starts[i])
        passes.append(spans)
    ids = np.concatenate(ids)[interleave([len(t) for t in ids])]
    num_samples = np.concatenate([index.num_samples for index in indexes])
    sample_rate = np.concatenate([index.sample_rate for index in indexes])
    hashes = np.concatenate(key_hashes)
    per = sample_tokens(num_samples, sample_rate, hashes, config, epoch, features)
    group = (np.arange(len(ids)) // config.buffer).astype(np.int32)
    rng = np.random.default_rng([config.seed, epoch, _SALT_MIX])
    plan = plan_arrivals(per, ids.astype(np.int32), group, config, epoch, rng, hashes, len(hashes))
    source = (np.searchsorted(starts, plan.sample, side="right") - 1).astype(np.int16)
    return MixedPlan(plan, starts, source, passes)


def stretch(
    index: Index, measure: np.ndarray, config: StreamConfig, source: int, begin: float, end: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """Positions in the source of its endless sequence of passes between the cumulative measures
    `begin` and `end`, and the (first, last) pass they span."""
    orders: dict[int, np.ndarray] = {}

    def order(number: int) -> np.ndarray:
        if number not in orders:
            orders[number] = pass_order(index, config, source, number)
        return orders[number]

    first_pass, first = _position(measure, order, begin)
    last_pass, last = _position(measure, order, end)
    positions = [
        order(number)[first if number == first_pass else 0 : last if number == last_pass else len(measure)]
        for number in range(first_pass, last_pass + 1)
    ]
    return np.concatenate(positions), (first_pass, last_pass)


def pass_order(index: Index, config: StreamConfig, source: int, number: int) -> np.ndarray:
    """Source positions in the order pass `number` of `source` takes them."""
    rng = np.random.default_rng([config.seed, source, number, _SALT_PASS])
    return _arrival_order(np.asarray(index.shard), config, rng)[0]


def _position(measure: np.ndarray, order: Callable[[int], np.ndarray], at: float) -> tuple[int, int]:
    """(pass, samples of it taken) once the cumulative measure `at` is reached: a sample is taken
    when the middle of its measure lies before `at`."""
    total = float(measure.sum())
    number = int(at // total)
    within = at - number * total
    weighed = measure[order(number)]
    middles = np.cumsum(weighed) - weighed / 2
    return number, int(np.searchsorted(middles, within, side="left"))


def interleave(lengths: list[int]) -> np.ndarray:
    """Order of the concatenated stretches that spreads each evenly: an item at the fraction of
    its stretch it stands at (ties in source order)."""
    at = np.concatenate([(np.arange(n) + 0.5) / n for n in lengths])
    source = np.repeat(np.arange(len(lengths)), lengths)
    return np.lexsort((source, at))


def realised_mix(mixed: MixedPlan, seconds: np.ndarray, weight_by: str) -> list[dict]:
    """Per source, what the epoch gives it: samples, seconds of audio, tokens (at the scales drawn),
    its `share` of the epoch in the `weight_by` measure, and the pass it ends the epoch in.
    `seconds`: of each sample id."""
    plan, n = mixed.plan, len(mixed.passes)
    amounts = {
        "samples": np.bincount(mixed.source, minlength=n).astype(np.float64),
        "duration": np.bincount(mixed.source, weights=seconds[plan.sample], minlength=n),
        "tokens": np.bincount(mixed.source, weights=plan.tokens, minlength=n),
    }
    chosen = amounts[weight_by]
    return [
        {
            "samples": int(amounts["samples"][i]),
            "seconds": float(amounts["duration"][i]),
            "tokens": int(amounts["tokens"][i]),
            "share": float(chosen[i] / chosen.sum()) if chosen.sum() else 0.0,
            "pass": mixed.passes[i][1],
        }
        for i in range(n)
    ]
