"""docs/pretrained.md, run on the paper's reference case: import with class names, predict,
shard the clips and run both sweeps, fine-tune from the import (one short Ray Train run); and the
paper recipes of examples/paper load."""

from __future__ import annotations

import csv

import pytest
from test_paper_model import REFERENCE, STATS

from elasticast import Classifier, load_checkpoint
from elasticast.training.config import TrainConfig, load_yaml
from jobs import evaluate, import_weights
from shards.inputs import write_manifest

from conftest import REPO

NAMES = [f"speaker{i}" for i in range(7)]


@pytest.mark.parametrize("dataset", ["voxceleb", "epic_sounds", "audioset", "vggsound"])
def test_the_paper_recipes_load(dataset):
    config = TrainConfig(**load_yaml(REPO / "examples" / "paper" / f"{dataset}.yaml"))
    assert config.recipe == "paper" and config.init and config.preset == "base"
    assert config.fixed_frames == (1024 if dataset in ("audioset", "vggsound") else 0)
    assert config.frame_shift == (5.0 if dataset == "epic_sounds" else 0.0)
    assert (config.token_dropout, config.noise) == (0.1, False)  # the paper's scripts: all four
    assert config.random_cut == (384 if dataset == "epic_sounds" else 0)


@pytest.mark.ray
@pytest.mark.slow
def test_the_guide_from_a_paper_checkpoint_to_predictions_sweeps_and_fine_tuning(
    tmp_path, make_shards, train_job, ray_local, capsys
):
    if not (REFERENCE / "paper_tiny_state_dict.pth").is_file():
        pytest.skip(f"the paper's reference case is not at {REFERENCE} (set ELASTICAST_PAPER_MODEL)")
    labels = tmp_path / "class_labels_indices.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([i, f"/m/{i}", name] for i, name in enumerate(NAMES))
    imported = tmp_path / "tiny.pt"
    state = str(REFERENCE / "paper_tiny_state_dict.pth")
    assert import_weights.main([state, str(imported), "--labels", str(labels), "--heads", "4", *STATS]) == 0
    assert load_checkpoint(imported).labels == NAMES

    clips = sorted((REFERENCE / "clips").glob("*.wav"))
    predictions = Classifier.from_checkpoint(imported).predict([str(c) for c in clips])
    assert len(predictions) == len(clips) and all(p.label in NAMES for p in predictions)

    rows = [{"path": str(c), "label": NAMES[i], "split": "train" if i < 4 else "test"} for i, c in enumerate(clips)]
    shards = tmp_path / "shards"
    manifest = write_manifest(tmp_path / "clips.csv", rows)
    assert make_shards.main(["--manifest", str(manifest), "--out", str(shards), "--backend", "local", "--quiet"]) == 0
    out = tmp_path / "eval"
    sweeps = ["--sweeps", "length", "scale", "--lengths", "256", "512", "--scales", "1", "2", "--compressions", "shift"]
    assert evaluate.main(["--checkpoint", str(imported), "--shards", str(shards), "--out", str(out), *sweeps]) == 0
    with (out / "results.csv").open() as handle:
        points = [row["point"] for row in csv.DictReader(handle)]
    assert points == ["native", "256 frames", "512 frames", "C=1 shift", "C=2 shift"]

    run = tmp_path / "run"
    assert train_job.main(["--init", str(tmp_path / "clips.csv"), "--shards", str(shards), "--out", str(run)]) == 2
    assert "--init" in capsys.readouterr().err
    flags = ["--epochs", "1", "--loader", "local", "--wandb", "disabled", "--rows-per-batch", "1", "--lr", "1e-5"]
    assert train_job.main(["--init", str(imported), "--shards", str(shards), "--out", str(run), *flags]) == 0
    assert "head re-initialised: the checkpoint's 7 classes are not the data's 6" in capsys.readouterr().out
    tuned = load_checkpoint(run / "best.pt")
    assert tuned.model["config"]["scaled_attention"] is False and tuned.model["config"]["heads"] == 4
    assert tuned.features.recipe == "paper" and tuned.labels == NAMES[:6]
