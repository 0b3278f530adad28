"""The paper's released model format, against the reference case made with the paper's own code
(`../shared/reference/paper_model`, or ELASTICAST_PAPER_MODEL): the import command's checkpoint
gives the reference logits through `Classifier` (native lengths) and through the evaluation's
stream (the fixed-length resolution modes), and our features are the reference features."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from elasticast import Classifier
from elasticast.checkpoint import load_checkpoint
from elasticast.evaluation import Point, load_candidate, point_logits
from jobs import import_weights
from loaders import PackedStream
from loaders.feature_spec import FeatureSpec
from loaders.features import kaldi_fbank
from shards.audio import load_source
from shards.inputs import write_manifest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("ELASTICAST_PAPER_MODEL", REPO.parent / "shared" / "reference" / "paper_model"))
STATS = ["--mean", "-5.842545", "--std", "3.88305"]
FIXED_MODES = {"C=1": 1.0, "C=2": 2.0, "C=2.6": 2.6}


@pytest.fixture(scope="module")
def reference() -> dict:
    if not (REFERENCE / "paper_tiny_state_dict.pth").is_file():
        pytest.skip(f"the paper's reference case is not at {REFERENCE} (set ELASTICAST_PAPER_MODEL to its folder)")
    meta = json.loads((REFERENCE / "paper_tiny_expected.json").read_text())
    return {
        "meta": meta,
        "expected": torch.load(REFERENCE / "paper_tiny_expected.pt", weights_only=True),
        "clips": [REFERENCE / "clips" / name for name in meta["clips"]],
    }


@pytest.fixture(scope="module")
def imported(reference, tmp_path_factory) -> dict[str, Path]:
    """The tiny reference model imported as the native recipe and as the fixed-length one."""
    out = tmp_path_factory.mktemp("imported")
    state = str(REFERENCE / "paper_tiny_state_dict.pth")
    assert import_weights.main([state, str(out / "native.pt"), "--heads", "4", *STATS]) == 0
    assert import_weights.main([state, str(out / "fixed.pt"), "--heads", "4", "--fixed-frames", "1024", *STATS]) == 0
    return {"native": out / "native.pt", "fixed": out / "fixed.pt"}


def test_import_records_the_paper_settings_and_places_every_tensor(imported, tmp_path, capsys):
    state_file = str(REFERENCE / "paper_tiny_state_dict.pth")
    assert import_weights.main([state_file, str(tmp_path / "again.pt"), "--heads", "4", *STATS]) == 0
    out = capsys.readouterr().out
    assert "left out nothing" in out and "newly initialised nothing" in out
    assert "converted pool.query <- attn_pool.to_q(attn_pool_queries)" in out
    assert import_weights.main([state_file, str(tmp_path / "v.pt"), "--dataset", "voxceleb"]) == 2
    assert "7 classes, voxceleb's model has 1251" in capsys.readouterr().err
    assert import_weights.main([str(REFERENCE / "paper_tiny_expected.pt"), str(tmp_path / "x.pt"), *STATS]) == 2
    assert "not a format elasticast imports" in capsys.readouterr().err
    checkpoint = load_checkpoint(imported["native"])
    config = checkpoint.model["config"]
    assert (config["heads"], config["max_frames"], config["scaled_attention"]) == (4, 3072, False)
    assert checkpoint.features.recipe == "paper" and checkpoint.features.fixed_frames is None
    assert load_checkpoint(imported["fixed"]).features.fixed_frames == 1024
    source = torch.load(REFERENCE / "paper_tiny_state_dict.pth", weights_only=True)
    state = checkpoint.state_dict
    assert torch.equal(state["time_embed"], source["module.pos_embed_time"])
    assert torch.equal(state["head_norm.weight"], source["module.mlp_norm.weight"])
    qkv = torch.cat(
        [
            source["module.blocks.modules_list.1.attn.to_q.weight"],
            source["module.blocks.modules_list.1.attn.to_kv.weight"],
        ]
    )
    assert torch.equal(state["blocks.1.attn.qkv.weight"], qkv)
    pool = (
        source["module.attn_pool.to_q.weight"] @ source["module.attn_pool_queries"]
        + source["module.attn_pool.to_q.bias"]
    )
    assert torch.allclose(state["pool.query"], pool, atol=1e-6)


def test_our_features_are_the_reference_features(reference, imported):
    features = load_checkpoint(imported["fixed"]).features
    native = load_checkpoint(imported["native"]).features
    for case in reference["meta"]["cases"]:
        spec, scale = (native, 1.0) if case["mode"] == "native" else (features, FIXED_MODES[case["mode"]])
        for clip, frames in zip(case["clips"], case["frames"]):
            ours = spec.spectrogram(load_source(str(REFERENCE / "clips" / clip), 16000)[0], scale).T
            theirs = reference["expected"][f"{case['mode']}/{clip}/features"]
            assert ours.shape == theirs.shape == (128, frames), (case["mode"], clip)
            assert (ours - theirs).abs().max() < 1e-3, (case["mode"], clip)


def test_classifier_of_the_imported_checkpoint_gives_the_reference_probabilities(reference, imported):
    predictions = Classifier.from_checkpoint(imported["native"]).predict([str(c) for c in reference["clips"]])
    for clip, prediction in zip(reference["meta"]["clips"], predictions):
        expected = reference["expected"][f"native/{clip}/logits"].softmax(dim=0)
        assert prediction.windows == 1
        assert abs(torch.from_numpy(prediction.probabilities) - expected).max() < 1e-4, clip


@pytest.fixture(scope="module")
def clip_shards(reference, make_shards, tmp_path_factory):
    """The reference clips as one test split, clip i labelled "i"."""
    work = tmp_path_factory.mktemp("clips")
    rows = [{"path": str(c), "label": str(i), "split": "test"} for i, c in enumerate(reference["clips"])]
    manifest = write_manifest(work / "rows.csv", rows)
    shards = work / "shards"
    assert make_shards.main(["--manifest", str(manifest), "--out", str(shards), "--backend", "local", "--quiet"]) == 0
    return shards


def test_fixed_length_modes_through_the_evaluation_give_the_reference_probabilities(reference, imported, clip_shards):
    names = reference["meta"]["clips"]
    shards = clip_shards
    candidate = load_candidate(imported["fixed"])
    for mode, scale in FIXED_MODES.items():
        point = Point("scale", scale=scale)
        keys, (logits,), labels, _ = point_logits(point, str(shards / "test"), [candidate], candidate.max_frames)
        assert sorted(labels.tolist()) == list(range(len(names)))  # every clip, scored as its own class id
        for key, label, ours in zip(keys, labels.tolist(), logits):
            expected = reference["expected"][f"{mode}/{names[label]}/logits"].softmax(dim=0)
            assert abs(ours.softmax(dim=0) - expected).max() < 1e-4, (mode, key)


def test_a_5_ms_frame_shift_is_kaldis_and_the_stream_plans_what_it_featurizes(reference, clip_shards):
    """The paper's Epic-Sounds recipe: frames every 5 ms at C = 1 (torchaudio's kaldi.fbank the reference)."""
    spec = FeatureSpec(16000, -8.660809, 3.878928, recipe="paper", frame_shift_ms=5.0)
    wave = load_source(str(reference["clips"][2]), 16000)[0]
    theirs = kaldi_fbank(wave, 16000, frame_shift_ms=5.0)
    ours = spec.spectrogram(wave)
    assert ours.shape[0] == theirs.shape[0] // 16 * 16 == 832  # 4.2 s: twice the frames of 10 ms
    assert (ours - (theirs[: ours.shape[0]] - spec.mean) / (2 * spec.std)).abs().max() < 1e-3
    stream = PackedStream(clip_shards / "test", rows_per_batch=2, shuffle=False, backend="local", features=spec)
    tokens = {
        key: int(n) for batch in stream.epoch(0) for key, n in zip(batch.keys, batch.n_tokens) if not batch.failed
    }
    assert sum(stream.stats[0]["failed"] for _ in [0]) == 0 and len(tokens) == 6
    assert sorted(tokens.values())[2] == 832 // 16 * 8
