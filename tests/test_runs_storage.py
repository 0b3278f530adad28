"""Runs, evaluation and inference on object storage (moto's real S3 server): the same results as
from local files, checkpoints that are complete or absent, and clear refusals before any work."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from elasticast import Classifier, save_checkpoint
from elasticast.checkpoint import CheckpointStore, RunStorageError, write_text
from elasticast.training.config import TrainConfig
from elasticast.training.loop import build_model
from jobs import evaluate as evaluate_job
from loaders.feature_spec import FeatureSpec
from shards import ShardDataset
from shards.audio import AudioError
from shards.location import Location

# a 1-block model in 512-token rows: 3 steps per epoch of the synthetic clips
TINY = ["--depth", "1", "--rows-per-batch", "1", "--max-tokens", "512", "--buffer", "64", "--warmup-epochs", "0.5"]


def bucket_names(url: str) -> list[str]:
    """Every object under `url`, relative to it, listed by s3fs directly (not through Location)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    root = url.split("://", 1)[1].rstrip("/")
    return sorted(path[len(root) + 1 :] for path in fs.find(root))


def upload_folder(folder: Path, url: str) -> str:
    """A copy of a local folder (a shard set) under `url`, file by file."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        Location.of(f"{url}/{path.relative_to(folder).as_posix()}").upload(path)
    return url


def test_checkpoint_store_on_s3_keeps_the_latest_and_never_lists_a_leftover(s3_bucket):
    import s3fs

    folder = f"{s3_bucket}/run/checkpoints"
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(
        f"{folder}/.tmp-epoch-0000-step-0000009.pt.123".split("://", 1)[1], b"cut short"
    )  # a crashed writer's leftover
    store = CheckpointStore(folder, keep=2)
    assert store.complete() == [] and store.latest() is None
    for epoch, step in ((0, 4), (1, 0), (0, 8)):
        store.save({"weights": torch.full((3,), float(epoch * 10 + step))}, epoch, step)
    names = ["epoch-0000-step-0000008.pt", "epoch-0001-step-0000000.pt"]
    assert [c.name for c in store.complete()] == names and store.latest().url == f"{folder}/{names[-1]}"
    assert bucket_names(folder) == names  # pruned to 2 on the store itself, the leftover removed
    assert torch.equal(CheckpointStore.load(store.latest())["weights"], torch.full((3,), 10.0))


@pytest.mark.parametrize(
    "target, reason",
    [
        ("s3://missing-bucket-x/run/a.json", "bucket does not exist"),
        ("https://example.invalid/run/a.json", "read-only"),
    ],
)
def test_a_write_the_store_refuses_is_a_run_storage_error_naming_the_url(s3_server, target, reason):
    with pytest.raises(RunStorageError, match=f"cannot write {target}: .*{reason}"):
        write_text(target, "{}")


def train_args(shards: Path | str, out: str, *more: str) -> list[str]:
    return ["--shards", str(shards), "--out", out, *TINY, "--valid-split", "train", "--loader", "local", *more]


def delete_bucket_when(bucket: str, appears: str, timeout_s: float = 120) -> threading.Thread:
    """Delete `bucket` (objects, then the bucket) as soon as the object `appears` (a URL) exists."""
    import s3fs

    def watch():
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        deadline = time.monotonic() + timeout_s
        while not fs.exists(appears) and time.monotonic() < deadline:
            time.sleep(0.05)
        fs.rm(bucket, recursive=True)
        if fs.exists(bucket):
            fs.rmdir(bucket)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_run_on_s3_stopped_by_its_shards_bucket_deleted_resumes_from_its_step_checkpoint_there(
    s3_bucket, synthetic_shards, ray_local, train_job, capfd
):
    """The run folder is on S3; the shards' own bucket goes away after the run's first step
    checkpoint: the Ray Data tasks that read the shards fail, and the run stops with exit 2 and one
    line of ours naming the bucket's shard (no hole, no second attempt), its step checkpoint kept
    on S3. With the shards back, `--resume` continues from that checkpoint at its step and
    (`--stop-after 1`) ends with the epoch: every key once, the run folder's files on S3, two
    checkpoints kept, no probe or temporary object left."""
    import s3fs

    run, store = f"{s3_bucket}/runs/tiny", f"{s3_bucket}-shards"

    def shards_bucket() -> str:
        """The shards in a bucket of their own, made (again) for them."""
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(store[5:])
        return upload_folder(synthetic_shards, f"{store}/shards")

    shards = shards_bucket()
    watcher = delete_bucket_when(store[5:], f"{run}/checkpoints/epoch-0000-step-0000001.pt")
    flags = ["--epochs", "2", "--checkpoint-every", "1", "--wandb", "disabled", "--loader", "ray"]
    capfd.readouterr()
    assert train_job.main(train_args(shards, run, *flags)) == 2
    watcher.join()
    captured = capfd.readouterr()
    ours = [line for line in captured.err.splitlines() if not line.startswith("\x1b[36m(")]  # Ray's are prefixed
    [line] = [line for line in ours if "error" in line.lower() or "Traceback" in line]
    assert line.startswith(f"error: cannot read {shards}/train/shard-") and "bucket does not exist" in line
    assert "attempt 1 failed" not in captured.out and "history.json" not in bucket_names(run)
    stopped_at = CheckpointStore(f"{run}/checkpoints").usable()
    assert stopped_at is not None and stopped_at.name.startswith("epoch-0000-step-")
    step = int(stopped_at.name.removesuffix(".pt").split("-step-")[1])
    shards_bucket()
    assert train_job.main([*train_args(shards, run, *flags, "--stop-after", "1"), "--resume"]) == 0
    out = capfd.readouterr().out
    assert f"resuming from checkpoint {stopped_at.name}: epoch 1, step {step}" in out
    assert "failed samples (holes left as padding, over 1 epoch(s)): train 0, validation (train) 0" in out
    names = bucket_names(run)
    assert {"config.yaml", "history.json", "keys/epoch-000.json", "best.pt", "last.pt", "metrics.json"} <= set(names)
    assert any(n.startswith("ray/") for n in names)  # Ray Train keeps its own marker in ray/
    ours = [n for n in names if not n.startswith("ray/")]
    assert not [n for n in ours if n.rsplit("/", 1)[-1].startswith(".")]  # no probe, no temporary object
    checkpoints = [n for n in names if n.startswith("checkpoints/")]
    assert len(checkpoints) == 2 and checkpoints[-1] == "checkpoints/epoch-0001-step-0000000.pt"
    history = json.loads(Location.of(f"{run}/history.json").read_text())
    assert [m["epoch"] for m in history] == [1]
    assert json.loads(Location.of(f"{run}/metrics.json").read_text())["epochs_run"] == 1
    keys = json.loads(Location.of(f"{run}/keys/epoch-000.json").read_text())
    assert keys["exactly_once"] and keys["delivered"] == len(ShardDataset(synthetic_shards).index("train"))


def test_a_url_run_keeps_wandb_files_in_a_local_folder_named_after_it(s3_bucket, synthetic_shards, train_job):
    config = train_job.prepare_run(
        TrainConfig(shards=str(synthetic_shards), out=f"{s3_bucket}/runs/w", valid_split="train")
    )
    assert config.wandb_dir == str(Path.home() / ".cache/elasticast/wandb/s3" / s3_bucket[5:] / "runs/w")
    assert bucket_names(f"{s3_bucket}/runs/w") == ["config.yaml"]


@pytest.mark.parametrize(
    "out, flags, message",
    [
        (
            "s3://missing-bucket-y/run",
            [],
            "cannot write to --out s3://missing-bucket-y/run: The specified bucket does not exist",
        ),
        (
            "https://example.invalid/run",
            [],
            "cannot write to --out https://example.invalid/run: https:// locations are read-only",
        ),
        ("{bucket}/nothing-here", ["--resume"], "--resume: {bucket}/nothing-here holds no run to resume"),
    ],
)
def test_an_unusable_url_out_is_one_line_and_exit_2_before_training(
    s3_bucket, synthetic_shards, train_job, capfd, out, flags, message
):
    out, message = out.format(bucket=s3_bucket), message.format(bucket=s3_bucket)
    assert train_job.main([*train_args(synthetic_shards, out, "--wandb", "disabled"), *flags]) == 2
    captured = capfd.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("error:")] == [
        line for line in captured.err.splitlines() if line.strip()
    ]
    assert captured.err.count("error:") == 1 and message in captured.err and "training" not in captured.out


@pytest.mark.parametrize("shards", ["{bucket}/no-shards-here", "s3://missing-bucket-z/shards"])
def test_a_url_shards_that_is_no_shard_set_is_refused_by_name(s3_bucket, train_job, capfd, shards):
    shards = shards.format(bucket=s3_bucket)
    assert train_job.main(train_args(shards, f"{s3_bucket}/run", "--wandb", "disabled")) == 2
    assert f"error: {shards} is not a make_shards output (no dataset.json)" in capfd.readouterr().err
    assert bucket_names(s3_bucket) == []  # nothing written


def synthetic_checkpoint(shards: Path) -> tuple[torch.nn.Module, bytes]:
    """A randomly initialised 1-block model saved as the trainer saves inference checkpoints."""
    dataset = ShardDataset(shards)
    config = TrainConfig(depth=1, max_frames=512)
    torch.manual_seed(0)
    model = build_model(config, len(dataset.labels))
    stats = dataset.fbank_stats
    features = FeatureSpec(dataset.sample_rate, stats["mean"], stats["std"], config.compression, config.max_frames)
    buffer = io.BytesIO()
    save_checkpoint(buffer, model, dataset.labels, features)
    return model, buffer.getvalue()


def test_evaluating_from_s3_gives_the_local_results(s3_bucket, synthetic_shards, tmp_path):
    _, checkpoint = synthetic_checkpoint(synthetic_shards)
    (tmp_path / "model.pt").write_bytes(checkpoint)
    Location.of(f"{s3_bucket}/models/model.pt").write_bytes(checkpoint)
    shards = upload_folder(synthetic_shards, f"{s3_bucket}/shards")
    flags = ["--sweeps", "scale", "--scales", "2", "--compressions", "shift", "--names", "m"]
    local = ["--checkpoint", str(tmp_path / "model.pt"), "--shards", str(synthetic_shards / "train")]
    remote = ["--checkpoint", f"{s3_bucket}/models/model.pt", "--shards", f"{shards}/train"]
    assert evaluate_job.main([*local, "--out", str(tmp_path / "eval"), *flags]) == 0
    assert evaluate_job.main([*remote, "--out", f"{s3_bucket}/eval", *flags]) == 0
    expected = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "results.csv").read_text())))
    got = list(csv.DictReader(io.StringIO(Location.of(f"{s3_bucket}/eval/results.csv").read_text())))
    assert [r["point"] for r in got] == ["C=2 shift"] and got == expected
    assert bucket_names(f"{s3_bucket}/eval") == ["results.csv", "results.md", "scale.png", "usage.csv"]
    assert Location.of(f"{s3_bucket}/eval/scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_classifier_from_s3_predicts_an_audio_url_as_the_local_file(s3_bucket, synthetic_shards, tmp_path):
    _, checkpoint = synthetic_checkpoint(synthetic_shards)
    (tmp_path / "model.pt").write_bytes(checkpoint)
    Location.of(f"{s3_bucket}/model.pt").write_bytes(checkpoint)
    clip = tmp_path / "stereo-8k.wav"  # downmixed and resampled to the model's 16 kHz on the way
    rng = np.random.default_rng(3)
    sf.write(clip, (0.2 * rng.standard_normal((12000, 2))).astype(np.float32), 8000, subtype="PCM_16")
    Location.of(f"{s3_bucket}/audio/stereo-8k.wav").upload(clip)
    local = Classifier.from_checkpoint(tmp_path / "model.pt").predict([clip])[0]
    remote = Classifier.from_checkpoint(f"{s3_bucket}/model.pt").predict([f"{s3_bucket}/audio/stereo-8k.wav"])[0]
    assert np.array_equal(remote.probabilities, local.probabilities) and remote.label == local.label
    with pytest.raises(AudioError, match=f"missing file: {s3_bucket}/audio/absent.wav"):
        Classifier.from_checkpoint(tmp_path / "model.pt").predict([f"{s3_bucket}/audio/absent.wav"])
