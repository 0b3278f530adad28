"""Mixed plans from generated indexes (no audio): every source's passes exactly once, never a
sample dropped, the weights met, purity; then a real mixed stream on two small shard sets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan import configs

from loaders import PackedStream, StreamConfig
from loaders.mix import pass_order, plan_mix
from loaders.plan import Index
from loaders.tokens import SCALE_GRID

from conftest import RECIPE_OPTIONS, SYNTHETIC_LABELS, build_synthetic_shards

RATE = 16000


def source(sizes: np.ndarray, name: str, per_shard: int = 50) -> Index:
    """A generated index: clips of `sizes` seconds, in shards of `per_shard`."""
    n = len(sizes)
    return Index(
        keys=np.array([f"{name}-{i}" for i in range(n)]),
        shard=np.arange(n) // per_shard,
        num_samples=(np.asarray(sizes) * RATE).astype(np.int64),
        sample_rate=np.full(n, RATE),
    )


@st.composite
def mixes(draw):
    count = draw(st.integers(1, 3))
    indexes = [
        source(
            np.array(draw(st.lists(st.floats(0.05, 20.0), min_size=1, max_size=120))), f"s{i}", draw(st.integers(1, 30))
        )
        for i in range(count)
    ]
    weights = draw(st.none() | st.lists(st.floats(0.05, 1.0), min_size=count, max_size=count).map(tuple))
    return indexes, weights, draw(st.sampled_from(["samples", "duration", "tokens"]))


def delivered_counts(indexes, config, epochs: int) -> list[list[np.ndarray]]:
    """Per epoch prefix, how often each sample of each source was planned (counted by key, by hand)."""
    positions = {key: (i, p) for i, index in enumerate(indexes) for p, key in enumerate(index.keys)}
    counts = [np.zeros(len(index.keys), np.int64) for index in indexes]
    keys = np.concatenate([index.keys for index in indexes])
    prefixes = []
    for epoch in range(epochs):
        for key, times in Counter(keys[plan_mix(indexes, config, epoch).plan.sample]).items():
            i, p = positions[key]
            counts[i][p] += times
        prefixes.append([c.copy() for c in counts])
    return prefixes


@settings(deadline=None, max_examples=60)
@given(mix=mixes(), config=configs(uniform=True), epochs=st.integers(1, 4))
def test_every_source_runs_whole_passes_never_dropping_a_sample(mix, config, epochs):
    """After any number of epochs, every sample of a source was planned k or k + 1 times (each
    pass takes every sample once, and the next pass starts only when one ends); no row overflows;
    the same epoch plans the same again."""
    indexes, weights, weight_by = mix
    config = StreamConfig(**{**config.__dict__, "weights": weights, "weight_by": weight_by})
    for counts in delivered_counts(indexes, config, epochs):
        for c in counts:
            assert c.max() - c.min() <= 1
    mixed = plan_mix(indexes, config, epochs - 1)
    plan = mixed.plan
    assert np.all(plan.offset + plan.tokens <= config.max_tokens) and np.all(plan.row < config.rows_per_batch)
    again = plan_mix(indexes, config, epochs - 1).plan
    assert np.array_equal(plan.sample, again.sample) and np.array_equal(plan.offset, again.offset)
    if weights is None and weight_by == "samples":  # the default: one pass of every source, an epoch
        assert all(c.tolist() == [epochs] * len(c) for c in delivered_counts(indexes, config, epochs)[-1])


@pytest.mark.parametrize("weight_by", ["samples", "duration", "tokens"])
def test_the_realised_mix_meets_the_weights_within_one_percent(weight_by):
    """3 sources of very different sizes and lengths (12 k samples in an epoch): each one's share of
    the epoch, summed by hand in the chosen measure, is within 1 % of its weight."""
    rng = np.random.default_rng(0)
    indexes = [
        source(rng.uniform(1.0, 10.0, 9000), "big"),
        source(rng.lognormal(0.0, 0.8, 2500), "speech"),
        source(rng.uniform(0.2, 30.0, 500), "noise"),
    ]
    weights = (0.5, 0.3, 0.2)
    config = StreamConfig(rows_per_batch=4, scales=SCALE_GRID, weights=weights, weight_by=weight_by)
    seconds = np.concatenate([index.num_samples / RATE for index in indexes])
    for epoch in (0, 3):
        mixed = plan_mix(indexes, config, epoch)
        plan = mixed.plan
        source_of = np.repeat(np.arange(3), [len(index.keys) for index in indexes])[plan.sample]
        amount = {"samples": np.ones(len(plan.sample)), "duration": seconds[plan.sample], "tokens": plan.tokens}
        got = np.bincount(source_of, weights=amount[weight_by]) / amount[weight_by].sum()
        assert len(plan.sample) > 10_000
        assert np.abs(got - weights).max() < 0.01, got
        tenth = np.bincount(source_of[: len(source_of) // 10], weights=amount[weight_by][: len(source_of) // 10])
        assert np.abs(tenth / tenth.sum() - weights).max() < 0.05  # mixed all along the epoch, not source by source
        assert plan.pad_ratio < 0.01


def test_each_pass_is_reshuffled_by_its_number_and_shard_by_shard():
    index = source(np.full(400, 2.0), "s", per_shard=20)
    config = StreamConfig(rows_per_batch=1, buffer=40)
    orders = [pass_order(index, config, 0, number) for number in range(3)]
    assert all(sorted(order.tolist()) == list(range(400)) for order in orders)
    assert len({tuple(order.tolist()) for order in orders}) == 3
    assert all(len(set(index.shard[order[:40]].tolist())) == 2 for order in orders)  # reads stay local


@pytest.fixture(scope="module")
def second_set(tmp_path_factory, make_shards):
    """12 synthetic clips labelled tone and buzz: one label shared with `synthetic_shards`, one new."""
    labels = ["tone", "buzz"] * 6
    return build_synthetic_shards(make_shards, tmp_path_factory.mktemp("second"), labels, "--shard-samples", "3")


@pytest.mark.parametrize("options", RECIPE_OPTIONS)
def test_a_mixed_stream_delivers_its_plan_once_with_labels_merged_by_name(synthetic_shards, second_set, options):
    """Two real shard sets (25 and 12 clips) mixed 0.3 / 0.7 on two ranks: what both ranks deliver
    is the plan, sample for sample; labels are the merged list (hum, tone, whistle, buzz), each
    sample's label its own by name; rows hold samples of both sources."""
    config = StreamConfig(rows_per_batch=2, max_tokens=256, buffer=8, backend="local", weights=(0.3, 0.7), **options)
    sources = [synthetic_shards / "train", second_set / "train"]
    ranks = [PackedStream(sources, config, rank=rank, world=2) for rank in (0, 1)]
    assert ranks[0].labels == ["hum", "tone", "whistle", "buzz"]
    assert ranks[0].sources.label_map[ranks[0].sources.names[1]] == {"tone": 1, "buzz": 3}
    own = {
        0: {f"clip{i:02d}": SYNTHETIC_LABELS[i % 3] for i in range(25)},
        1: {f"clip{i:02d}": ["tone", "buzz"][i % 2] for i in range(12)},
    }
    delivered, mixed_rows = Counter(), 0
    for stream in ranks:
        for batch in stream.epoch(1):
            delivered.update(batch.sample_ids)
            for source, key, label in zip(batch.sources, batch.keys, batch.labels.tolist()):
                assert stream.labels[label] == own[source][key]
            rows = [{s for s, r in zip(batch.sources, batch.row.tolist()) if r == row} for row in range(2)]
            mixed_rows += sum(len(r) == 2 for r in rows)
    assert delivered == Counter(ranks[0].planned_ids(1).to_pylist())
    assert mixed_rows > 0
    mix = ranks[0].mix(1)
    assert [m["weight"] for m in mix.values()] == [0.3, 0.7]
    assert sum(m["samples"] for m in mix.values()) == sum(delivered.values()) == 37  # an epoch: all sources' size


def test_unequal_sample_rates_and_weight_counts_are_refused(synthetic_shards, second_set, tmp_path, make_shards):
    with pytest.raises(ValueError, match="3 weights for 2 sources"):
        PackedStream([synthetic_shards, second_set], rows_per_batch=1, backend="local", weights=(1.0, 2.0, 3.0))
    slow = build_synthetic_shards(make_shards, tmp_path, ["hum"] * 4, "--sample-rate", "8000")
    with pytest.raises(ValueError, match=f"{slow} has sample_rate 8000 where .* has 16000"):
        PackedStream([synthetic_shards, slow], rows_per_batch=1, backend="local")
