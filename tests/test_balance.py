"""Class-balanced sampling: make_shards' weights against the AST rule by hand, a manifest's
`weight` column, draw frequencies against the weights (chi-square), draws keyed by (seed, epoch,
draw index), every draw delivered once across ranks and after a resume, old indexes refused."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from loaders import PackedStream
from loaders.config import StreamConfig
from loaders.plan import Index, plan_epoch
from shards import ShardDataset

from conftest import SYNTHETIC_PATCHES, write_synthetic_manifest

# chi-square critical values at p = 0.001 (tables), by degrees of freedom
CHI2_999 = {19: 43.820}


def balanced(shards: Path, **options) -> PackedStream:
    settings = {"rows_per_batch": 1, "max_tokens": 80, "backend": "local", "sampling": "balanced", **options}
    return PackedStream(shards / "train", **settings)


def test_make_shards_writes_the_ast_class_balance_weights(synthetic_shards):
    """25 clips labelled hum, tone, whistle in turn: 9 hum, 8 tone, 8 whistle."""
    rows = ShardDataset(synthetic_shards).index("train").to_pylist()
    by_hand = {"hum": 1000 / 9.01, "tone": 1000 / 8.01, "whistle": 1000 / 8.01}
    assert Counter(r["labels"][0] for r in rows) == {"hum": 9, "tone": 8, "whistle": 8}
    assert all(r["weight"] == pytest.approx(by_hand[r["labels"][0]], rel=1e-12) for r in rows)


@pytest.fixture(scope="module")
def weighted_shards(tmp_path_factory, make_shards) -> Path:
    """Multi-label clips, two of them (clip01, clip04) with a manifest weight."""
    work = tmp_path_factory.mktemp("weighted")
    manifest = write_synthetic_manifest(work / "audio", ["hum;tone", "tone", "whistle;hum", "hum", "whistle"])
    header, *lines = manifest.read_text().splitlines()
    given = {1: "2.5", 4: "0.125"}
    rows = [f"{header},weight"] + [f"{line},{given.get(i, '')}" for i, line in enumerate(lines)]
    manifest.write_text("\n".join(rows) + "\n")
    out = work / "shards"
    assert make_shards.main(["--manifest", str(manifest), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    return out


def test_multi_label_weights_add_up_and_a_manifest_weight_overrides(weighted_shards):
    """Counts: hum 3, tone 2, whistle 2. clip01 and clip04 carry the manifest's weights."""
    hum, tone, whistle = 1000 / 3.01, 1000 / 2.01, 1000 / 2.01
    expected = {"clip00": hum + tone, "clip01": 2.5, "clip02": whistle + hum, "clip03": hum, "clip04": 0.125}
    rows = ShardDataset(weighted_shards).index("train").to_pylist()
    assert {r["key"]: r["weight"] for r in rows} == pytest.approx(expected, rel=1e-12)


def test_draw_frequencies_match_the_weights_chi_square():
    """20 samples of weights 1..20, 200 epochs of 20 draws: the counts against the expected
    4000 * w / 210 (>= 19 each), chi-square with 19 degrees of freedom below the 0.1 % point.
    Every epoch has as many draws as samples, all delivered once."""
    n, epochs = 20, 200
    weight = np.arange(1, n + 1, dtype=np.float64)
    index = Index(np.array([f"k{i}" for i in range(n)]), np.arange(n) // 4, np.full(n, 8000), np.full(n, 16000), weight)
    config = StreamConfig(rows_per_batch=2, max_tokens=256, buffer=8, sampling="balanced", seed=3)
    counts = np.zeros(n)
    for epoch in range(epochs):
        plan = plan_epoch(index, config, epoch)
        assert sorted(plan.draw.tolist()) == list(range(n))
        counts += np.bincount(plan.sample, minlength=n)
    expected = epochs * n * weight / weight.sum()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert statistic < CHI2_999[n - 1], (statistic, counts.tolist())
    assert counts[-1] > 5 * counts[0]  # and not uniform: the test can tell


def test_a_draw_is_keyed_by_seed_epoch_and_draw_index():
    """The same draw index takes the same sample in a plan made on any packing settings, and its
    scale C follows the draw index (not the key, which may be drawn twice): relabelling the keys
    leaves every draw's scale as it was; another epoch or seed draws afresh."""
    n = 300
    rng = np.random.default_rng(0)
    index = Index(
        np.array([f"k{i}" for i in range(n)]),
        np.arange(n) // 10,
        rng.integers(8000, 80000, n),
        np.full(n, 16000),
        rng.uniform(0.1, 10.0, n),
    )
    config = StreamConfig(rows_per_batch=2, scales=(1.0, 2.0, 3.0, 4.0), sampling="balanced")
    drawn = lambda plan: dict(zip(plan.draw.tolist(), zip(plan.sample.tolist(), plan.scale.tolist())))
    base = drawn(plan_epoch(index, config, 0))
    assert drawn(plan_epoch(index, StreamConfig(**{**config.__dict__, "packing": "greedy", "buffer": 7}), 0)) == base
    renamed = Index(
        np.array([f"other{i}" for i in range(n)]), index.shard, index.num_samples, index.sample_rate, index.weight
    )
    assert drawn(plan_epoch(renamed, config, 0)) == base
    assert len(set(s for s, _ in base.values())) < n  # some samples drawn twice, some never
    for other in (plan_epoch(index, config, 1), plan_epoch(index, StreamConfig(**{**config.__dict__, "seed": 1}), 0)):
        assert sum(base[d][0] != s for d, (s, _) in drawn(other).items()) > n // 2


@pytest.mark.parametrize("options", [{}, {"mixup": 0.5, "scales": (1.0, 1.6, 2.4)}])
def test_ranks_share_the_draws_once_and_a_resume_on_another_world_delivers_the_rest(synthetic_shards, options):
    """Two ranks deliver every draw of the epoch once (no draw on both); three ranks taking a
    step each, then two ranks resuming from that position, deliver the same draws with the same
    features as the uninterrupted run."""
    alone = balanced(synthetic_shards, **options)
    planned = Counter(alone.planned_ids(2).to_pylist())
    assert sum(planned.values()) == len(SYNTHETIC_PATCHES) == len(planned)
    assert len({i.split("#")[0] for i in planned}) < len(planned)  # a key drawn twice: told apart by its draw
    ranks = [list(balanced(synthetic_shards, **options, rank=r, world=2).epoch(2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert Counter(i for batches in ranks for b in batches for i in b.sample_ids) == planned
    reference = {b.step: b for b in alone.epoch(2)}
    first = [next(iter(balanced(synthetic_shards, **options, rank=r, world=3).epoch(2))) for r in range(3)]
    rest = [b for r in (0, 1) for b in balanced(synthetic_shards, **options, rank=r, world=2).epoch(2, consumed=3)]
    seen = Counter(i for b in first + rest for i in b.sample_ids)
    assert seen == planned
    by_ids = {tuple(b.sample_ids): b for b in reference.values()}
    for batch in first + rest:
        if batch.num_samples:
            same = by_ids[tuple(batch.sample_ids)]
            assert np.array_equal(batch.patches.numpy(), same.patches.numpy())
            assert (batch.targets is None) == (same.targets is None)
            assert batch.targets is None or np.array_equal(batch.targets.numpy(), same.targets.numpy())


def test_an_index_without_weights_is_refused_for_balanced_sampling_only(synthetic_shards, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(synthetic_shards, root)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(meta | {"format_version": 2}))
    index_file = root / "train" / "index.parquet"
    pq.write_table(pq.read_table(index_file).drop_columns(["weight"]), index_file)
    assert PackedStream(root / "train", rows_per_batch=1, backend="local").num_samples == len(SYNTHETIC_PATCHES)
    with pytest.raises(ValueError, match="built before weights: rebuild it with make_shards"):
        balanced(root)
    with pytest.raises(ValueError, match="sampling 'weighted' is not one of"):
        StreamConfig(rows_per_batch=1, sampling="weighted")


def test_a_key_drawn_twice_is_two_samples_with_their_own_masks(synthetic_shards):
    """The draw, not the key, keys SpecAugment: the draws of one key (same audio, C = 1) are
    masked apart, and the masks follow (seed, epoch, draw) from one run to the next."""
    run = lambda: [(b.sample_ids, b) for b in balanced(synthetic_shards, freq_mask=40, time_mask=40).epoch(0)]
    first, second = run(), run()
    assert all(a == b and torch.equal(x.patches, y.patches) for (a, x), (b, y) in zip(first, second))
    tokens = {}
    for ids, batch in first:
        for i, sample_id in enumerate(ids):
            tokens[sample_id] = batch.patches[batch.row[i]][batch.segment_ids[batch.row[i]] == batch.slot[i]]
    twice = defaultdict(list)
    for sample_id, values in tokens.items():
        twice[sample_id.split("#")[0]].append(values)
    pairs = [draws for draws in twice.values() if len(draws) > 1]
    assert pairs and all(not torch.equal(draws[0], draws[1]) for draws in pairs)
