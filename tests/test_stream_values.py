"""PackedStream options that must change the batches, and rank dealing, on the synthetic shard set
(real tars, decoding and fbanks; no Ray, no FSDD, so nothing here can be skipped): packing modes
against hand-worked packings, per-sample C and shuffles keyed by seed, epoch and key,
SpecAugment keyed by key, round-robin dealing with fillers, labels as the manifest gives them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from loaders import PackedStream
from loaders.tokens import SCALE_GRID
from shards import ShardDataset

from conftest import SYNTHETIC_PATCHES, build_synthetic_shards

CAPACITY = 80  # 10 patches: the synthetic lengths 6+4, 7+3, 8+2, 5+5 fill rows exactly


def stream(shards: Path, **options) -> PackedStream:
    return PackedStream(
        shards / "train", **{"rows_per_batch": 1, "max_tokens": CAPACITY, "backend": "local", **options}
    )


def keys_of(shards: Path) -> list[str]:
    return ShardDataset(shards).index("train").column("key").to_pylist()


def scale_by_key(shards: Path, epoch: int, **options) -> dict[str, float]:
    plan = stream(shards, scales=SCALE_GRID, **options).plan(epoch)
    keys = keys_of(shards)
    return {keys[i]: float(c) for i, c in zip(plan.sample, plan.scale)}


def row_keys(shards: Path, epoch: int, **options) -> list[list[str]]:
    """The plan's rows (rows_per_batch=1: one per batch) as key lists, in step order."""
    plan = stream(shards, **options).plan(epoch)
    keys = keys_of(shards)
    return [[keys[i] for i in plan.sample[plan.batch == b]] for b in range(plan.n_batches)]


@pytest.fixture(scope="module")
def reshuffled_shards(tmp_path_factory, make_shards) -> Path:
    """The same clips and keys, cut into other shards in another order (--seed, --shard-samples)."""
    return build_synthetic_shards(
        make_shards, tmp_path_factory.mktemp("reshuffled"), None, "--shard-samples", "3", "--seed", "5"
    )


def test_greedy_plan_is_next_fit_in_shard_order(synthetic_shards):
    """Unshuffled, greedy packs the index in shard order, opening a row only when the next sample
    does not fit; first_fit closes every row but the last (a 1-patch clip) exactly."""
    dataset = ShardDataset(synthetic_shards)
    index = dataset.index("train").to_pylist()
    shard_rank = {name: i for i, name in enumerate(dataset.meta["splits"]["train"]["shards"])}
    arrival = sorted(range(len(index)), key=lambda i: shard_rank[index[i]["shard"]])
    tokens = [
        8 * ((1 + (index[i]["num_samples"] - 400) // 160) // 16) for i in arrival
    ]  # Kaldi frames, floored to patches
    expected, fill = [[]], 0
    for key, count in zip((index[i]["key"] for i in arrival), tokens):
        if fill + count > CAPACITY:
            expected.append([])
            fill = 0
        expected[-1].append(key)
        fill += count
    assert row_keys(synthetic_shards, 0, packing="greedy", shuffle=False) == expected
    first_fit = stream(synthetic_shards, packing="first_fit", shuffle=False).plan(0)
    fills = np.bincount(first_fit.batch, weights=first_fit.tokens)
    assert sorted(fills.tolist()) == [8.0] + [float(CAPACITY)] * 12
    assert first_fit.n_batches < len(expected)


def test_a_samples_c_is_fixed_by_seed_epoch_and_key_whatever_the_shard_layout(synthetic_shards, reshuffled_shards):
    base = scale_by_key(synthetic_shards, 2, seed=3)
    assert scale_by_key(reshuffled_shards, 2, seed=3) == base  # another order and other shards: same C per key
    assert scale_by_key(synthetic_shards, 2, seed=3, packing="greedy", shuffle=False) == base
    assert set(base.values()) <= set(SCALE_GRID)
    for other in (scale_by_key(synthetic_shards, 3, seed=3), scale_by_key(synthetic_shards, 2, seed=4)):
        changed = sum(base[k] != other[k] for k in base)
        assert changed >= len(base) // 2, "C must be drawn again for another epoch or seed (15 in 16 change)"


@pytest.mark.parametrize("changed", [{"seed": 1}, {"epoch": 1}])
def test_the_shuffle_follows_seed_and_epoch(synthetic_shards, changed):
    """At one fixed C, only the shuffle can change the rows: shards, members and row order."""
    base = {"seed": 0, "epoch": 0}
    rows = lambda seed, epoch, **options: row_keys(synthetic_shards, epoch, seed=seed, **options)
    first = rows(**base)
    assert rows(**base) == first
    other = rows(**{**base, **changed})
    assert other != first and sorted(map(sorted, other)) != sorted(
        map(sorted, first)
    )  # other row mates, not only other order
    assert rows(**{**base, **changed}, shuffle=False) == rows(**base, shuffle=False)


def batches_by_rank(shards: Path, world: int, epoch: int = 1, **options) -> list[list]:
    return [list(stream(shards, rank=rank, world=world, **options).epoch(epoch)) for rank in range(world)]


def same_batch(a, b) -> bool:
    return (
        a.sample_ids == b.sample_ids
        and torch.equal(a.patches, b.patches)
        and torch.equal(a.segment_ids, b.segment_ids)
        and (a.targets is None) == (b.targets is None)
        and (a.targets is None or torch.equal(a.targets, b.targets))
    )


RECIPES = {"uniform": {}, "mixup+balanced": {"mixup": 0.5, "sampling": "balanced"}}  # the recipe options


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("scales", [(1.0,), (1.0, 1.6, 2.4, 3.0)])
def test_ranks_are_dealt_round_robin_with_fillers_and_see_every_key_once(synthetic_shards, scales, recipe):
    """Every planned sample (under balanced sampling every draw) once over 2 or 3 ranks, each
    batch the one the single rank gets at that global step, features, masks and mixup alike."""
    options = {"scales": scales, "freq_mask": 24, "time_mask": 24, "seed": 0, **RECIPES[recipe]}
    single = stream(synthetic_shards, **options)
    uneven = lambda n: n % 2 and n % 3  # a batch count 2 and 3 ranks cannot share evenly: fillers
    epoch = next(e for e in range(1, 40) if uneven(single.plan(e).n_batches))
    alone = list(single.epoch(epoch))
    n = len(alone)
    for world in (2, 3):
        ranks = batches_by_rank(synthetic_shards, world, epoch, **options)
        steps = -(-n // world)
        for rank, batches in enumerate(ranks):
            assert len(batches) == steps == stream(synthetic_shards, rank=rank, world=world, **options).steps(1)
            for step, batch in enumerate(batches):
                assert batch.step == step
                if step * world + rank < n:  # global batch step * world + rank: same features, same masks
                    assert not batch.is_padding and same_batch(batch, alone[step * world + rank])
                else:
                    assert batch.is_padding and batch.num_samples == 0 and batch.real_tokens == 0
                    assert batch.patches.shape == alone[0].patches.shape and not batch.patches.any()
        seen = Counter(key for batches in ranks for batch in batches for key in batch.sample_ids)
        assert seen == Counter(single.planned_ids(epoch).to_pylist())
        assert seen == Counter(keys_of(synthetic_shards)) or recipe != "uniform"
        assert sum(batch.is_padding for batches in ranks for batch in batches) == steps * world - n


def patches_by_key(shards: Path, epoch: int = 0, seed: int = 0, mask: int = 0) -> dict[str, torch.Tensor]:
    batches = stream(shards, freq_mask=mask, time_mask=mask, seed=seed).epoch(epoch)
    return {
        key: b.patches[b.row[i]][b.segment_ids[b.row[i]] == b.slot[i]] for b in batches for i, key in enumerate(b.keys)
    }


def test_spec_augment_is_keyed_by_key_epoch_and_seed(synthetic_shards):
    """Clips of equal length hold identical audio: only the key tells their masks apart."""
    unmasked, base = patches_by_key(synthetic_shards), patches_by_key(synthetic_shards, mask=40)
    assert base.keys() == unmasked.keys()
    assert all(torch.equal(base[k][base[k] != 0], unmasked[k][base[k] != 0]) for k in base)  # masking only zeroes
    assert sum(not torch.equal(base[k], unmasked[k]) for k in base) >= len(base) * 3 // 4
    twins = {}
    for key, tokens in unmasked.items():
        twins.setdefault(tuple(tokens.flatten().tolist()), []).append(key)
    groups = [keys for keys in twins.values() if len(keys) > 1]
    assert len(groups) == len(set(SYNTHETIC_PATCHES)) - 1  # every length but the single 1-patch clip
    assert all(len({tuple(base[k].flatten().tolist()) for k in keys}) > 1 for keys in groups)
    for other in (
        patches_by_key(synthetic_shards, epoch=1, mask=40),
        patches_by_key(synthetic_shards, seed=1, mask=40),
    ):
        assert sum(not torch.equal(base[k], other[k]) for k in base) >= len(base) * 3 // 4


@pytest.fixture(scope="module")
def multi_label_shards(tmp_path_factory, make_shards) -> Path:
    labels = ["hum;tone", "tone", "whistle;hum", "hum;tone;whistle", "whistle"]
    return build_synthetic_shards(make_shards, tmp_path_factory.mktemp("multi"), labels)


def test_labels_are_class_ids_or_multi_hot_as_the_manifest_says(synthetic_shards, multi_label_shards):
    single = {
        key: int(label) for b in stream(synthetic_shards, seed=2).epoch(0) for key, label in zip(b.keys, b.labels)
    }
    assert single == {f"clip{i:02d}": i % 3 for i in range(len(SYNTHETIC_PATCHES))}  # labels sorted: hum, tone, whistle
    batches = list(stream(multi_label_shards, max_tokens=256).epoch(0))
    multi = {key: label.tolist() for b in batches for key, label in zip(b.keys, b.labels)}
    assert all(b.labels.dtype == torch.float32 for b in batches)
    assert multi == {
        "clip00": [1, 1, 0],
        "clip01": [0, 1, 0],
        "clip02": [1, 0, 1],
        "clip03": [1, 1, 1],
        "clip04": [0, 0, 1],
    }


def test_rows_are_shuffled_out_of_packing_order(synthetic_shards):
    """first_fit emits rows largest sample first; the plan must not hand that order on (the
    step's workload would fall through the epoch). Unshuffled, it does, as a check of the check."""

    def row_maxima(**options) -> list[int]:
        plan = stream(synthetic_shards, **options).plan(0)
        return [int(plan.tokens[plan.batch == b].max()) for b in range(plan.n_batches)]

    assert row_maxima(shuffle=False) == sorted(row_maxima(shuffle=False), reverse=True)
    for seed in range(4):
        assert row_maxima(seed=seed) != sorted(row_maxima(seed=seed), reverse=True), seed
