"""Evaluation across lengths and resolutions: what each model sees at a point, the token-usage
arithmetic, and `jobs/evaluate.py` end to end on a small demo shard set."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from elasticast import save_checkpoint
from elasticast.ast_baseline import fixed_size_tokens, fixed_size_usage
from elasticast.evaluation import Point, load_candidate, sweep_points
from elasticast.training.config import TrainConfig
from elasticast.training.loop import build_model
from jobs import evaluate as evaluate_job
from loaders import PackedStream
from loaders.feature_spec import FeatureSpec
from shards import ShardDataset
from shards.demo import write_demo_corpus


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory, make_shards):
    """Demo clips of 0.5-30 s: longer than the caps and AST sizes below, so both crop. One more tone
    clip is in test, so the test split's classes have uneven counts (2 tones, 1 of each other)."""
    work = tmp_path_factory.mktemp("eval")
    manifest = write_demo_corpus(work / "audio", clips=40, min_s=0.5, max_s=30.0)
    rows = manifest.read_text().splitlines()
    moved = next(i for i, row in enumerate(rows) if ",tone," in row and row.endswith(",train"))
    rows[moved] = rows[moved].removesuffix(",train") + ",test"
    manifest.write_text("\n".join(rows) + "\n")
    assert (
        make_shards.main(
            [
                "--manifest",
                str(manifest),
                "--out",
                str(work / "shards"),
                "--shard-size",
                "8MiB",
                "--backend",
                "local",
                "--quiet",
            ]
        )
        == 0
    )
    return work / "shards"


def write_checkpoint(path, shards, labels=None, always: int | None = None, **overrides):
    """A randomly initialised model saved as jobs/train.py saves its inference checkpoints; with
    `always`, its head ignores the input and names that class for every clip."""
    dataset = ShardDataset(shards)
    config = TrainConfig(**overrides)
    torch.manual_seed(0)
    model = build_model(config, len(labels or dataset.labels))
    if always is not None:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(always), model.head.out_features))
    features = FeatureSpec(
        dataset.sample_rate,
        dataset.fbank_stats["mean"],
        dataset.fbank_stats["std"],
        config.compression,
        config.max_frames,
    )
    save_checkpoint(
        path,
        model,
        labels or dataset.labels,
        features,
        extra={"train_config": config.to_dict(), "stream": dataclasses.asdict(config.stream())},
    )
    return path


def test_points_cover_both_sweeps_and_avgpool_takes_whole_scales_only():
    points = sweep_points(("length", "scale"), (256, 128), (1.0, 1.5, 2.0), ("shift", "avgpool"))
    assert [p.name for p in points] == [
        "native",
        "128 frames",
        "256 frames",
        "C=1 shift",
        "C=1.5 shift",
        "C=2 shift",
        "C=1 avgpool",
        "C=2 avgpool",
    ]
    with pytest.raises(ValueError, match="multiples of 16"):
        sweep_points(("length",), (100,), (1.0,), ("shift",))
    with pytest.raises(ValueError, match="unknown sweep"):
        sweep_points(("lengths",), (128,), (1.0,), ("shift",))


def test_at_a_cap_elasticast_crops_only_longer_clips_and_ast_crops_or_pads_every_clip(demo_shards):
    """At 256 frames (128 tokens): ElasticAST keeps short clips whole and unpadded; AST's input
    is exactly 128 tokens per clip, the clip's first tokens then zeros."""
    cap, cap_tokens = 256, 128
    native = PackedStream(demo_shards / "test", rows_per_batch=8, max_tokens=2048, shuffle=False, backend="local")
    capped = PackedStream(
        demo_shards / "test",
        rows_per_batch=8,
        max_tokens=2048,
        shuffle=False,
        backend="local",
        max_frames=Point("length", max_frames=cap).cap(3072),
    )
    whole = {k: int(n) for b in native.epoch(0) for k, n in zip(b.keys, b.n_tokens)}
    batch = next(iter(capped.epoch(0)))
    seen = dict(zip(batch.keys, batch.n_tokens.tolist()))
    assert seen == {k: min(n, cap_tokens) for k, n in whole.items() if k in seen}
    assert any(n < cap_tokens for n in seen.values()) and any(n > cap_tokens for n in whole.values())
    tokens = fixed_size_tokens(batch, Point("length", max_frames=cap).ast_frames(1024) // 16 * 8)
    assert tokens.shape[1] == cap_tokens
    for i, n in enumerate(batch.n_tokens.tolist()):
        own = batch.patches[batch.row[i]][batch.segment_ids[batch.row[i]] == batch.slot[i]]
        assert torch.equal(tokens[i, :n], own) and not tokens[i, n:].any()
    assert Point("length").ast_frames(512) == 512 and Point("scale", scale=2.0).ast_frames(512) == 512


def test_ast_positions_are_its_own_at_its_size_and_resampled_elsewhere(demo_shards, tmp_path):
    ast = load_candidate(write_checkpoint(tmp_path / "ast.pt", demo_shards, model="ast", target_frames=256)).model
    assert torch.equal(ast.grid_positions(ast.tokens), ast.pos_embed[:, 1:])
    longer = ast.grid_positions(ast.input_tokens(512)).reshape(32, 8, -1)
    table = ast.pos_embed[0, 1:].reshape(16, 8, -1)
    assert longer.shape[0] == 32 and torch.allclose(longer[0], table[0]) and torch.allclose(longer[-1], table[-1])
    batch = next(
        iter(
            PackedStream(demo_shards / "test", rows_per_batch=2, max_tokens=2048, shuffle=False, backend="local").epoch(
                0
            )
        )
    )
    assert ast(batch, frames=512).shape == ast(batch).shape == (batch.num_samples, ast.config.num_classes)


def test_fixed_size_usage_counts_padding_and_cut():
    assert fixed_size_usage([10, 40, 25], size=25, upstream_cut=7) == (60, 75, 22)


@pytest.mark.slow
def test_evaluate_job_writes_tables_plots_and_usage_for_both_model_kinds(demo_shards, tmp_path):
    job = evaluate_job
    dataset = ShardDataset(demo_shards)
    counts = dataset.meta["splits"]["test"]["label_counts"]
    named = {"elastic": "tone", "ast": "crackle"}
    assert (counts["tone"], counts["crackle"]) == (2, 1)
    elastic = write_checkpoint(tmp_path / "elastic.pt", demo_shards, always=dataset.labels.index(named["elastic"]))
    ast = write_checkpoint(
        tmp_path / "ast.pt", demo_shards, always=dataset.labels.index(named["ast"]), model="ast", target_frames=128
    )
    out = tmp_path / "eval"
    code = job.main(
        [
            "--checkpoint",
            str(elastic),
            str(ast),
            "--shards",
            str(demo_shards),
            "--out",
            str(out),  # a shard set: its test split
            "--lengths",
            "128",
            "512",
            "--scales",
            "1",
            "2.4",
            "3",
            "--compressions",
            "shift",
            "avgpool",
        ]
    )
    assert code == 0
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    points = [
        "native",
        "128 frames",
        "512 frames",
        "C=1 shift",
        "C=2.4 shift",
        "C=3 shift",
        "C=1 avgpool",
        "C=3 avgpool",
    ]
    assert [(r["checkpoint"], r["point"]) for r in rows] == [(c, p) for p in points for c in ("elastic", "ast")]
    test_clips = dataset.meta["splits"]["test"]["samples"]
    assert all(int(r["samples"]) == test_clips for r in rows)
    # a model that names one class for every clip is right on exactly that class's clips
    for r in rows:
        expected = counts[named[r["checkpoint"]]] / test_clips  # 2/9 and 1/9
        assert (r["metric_name"], float(r["metric"])) == ("accuracy", pytest.approx(expected, abs=1e-6)), r
    by = {(r["checkpoint"], r["point"]): r for r in rows}
    assert by["ast", "native"]["input_frames"] == "128" and by["ast", "512 frames"]["input_frames"] == "512"
    assert float(by["ast", "512 frames"]["tokens_per_clip"]) == 256
    assert (
        float(by["elastic", "128 frames"]["tokens_per_clip"]) <= 64 < float(by["elastic", "native"]["tokens_per_clip"])
    )
    assert float(by["elastic", "C=3 shift"]["tokens_per_clip"]) < float(by["elastic", "C=1 shift"]["tokens_per_clip"])
    with (out / "usage.csv").open() as handle:
        usage = {(u["model"], u["setting"]): u for u in csv.DictReader(handle)}
    train = PackedStream(demo_shards / "train", rows_per_batch=2, max_tokens=2048, backend="local")
    real = int(train.plan(0).tokens.sum())
    for mode in ("first_fit", "greedy"):
        packed = usage["elasticast", f"{mode}, 2 x 2048 tokens"]
        slots = real / (1 - float(packed["pad_ratio"]))  # whole batches of 2 rows x 2048 tokens
        assert float(packed["cut_ratio"]) == 0 and abs(slots / 4096 - round(slots / 4096)) < 1e-6
    assert float(usage["ast", "128 frames"]["cut_ratio"]) > 0.5  # demo clips run to 30 s; AST keeps 1.28 s
    for name in ("length.png", "scale.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| elastic |" in (out / "results.md").read_text()


def test_evaluate_job_refuses_a_checkpoint_of_other_labels_by_name(demo_shards, tmp_path, capsys):
    job = evaluate_job
    labels = [f"class{i}" for i in range(len(ShardDataset(demo_shards).labels))]
    other = write_checkpoint(tmp_path / "other.pt", demo_shards, labels=labels)
    assert (
        job.main(["--checkpoint", str(other), "--shards", str(demo_shards / "test"), "--out", str(tmp_path / "e")]) == 2
    )
    assert "other: its labels" in capsys.readouterr().err
