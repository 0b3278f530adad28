"""Faults never shrink the data silently: the retry policy's limits, what counts as transient, a
failure budget for holes, builds that fail on inputs the store did not serve, checkpoints
verified before a resume, and errors that name their file. Object storage is moto's real S3
server, faults come from the proxy in tests/object_store.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time

import pytest
import torch

from elasticast.checkpoint import UNREADABLE, CheckpointStore, LabelMismatch, storage_cause
from elasticast.metrics import NothingToScore, score
from elasticast.training.config import TrainConfig
from loaders import FailureBudgetExceeded, PackedStream
from shards import ShardDataset
from shards.audio import _ReadRecorder, probe
from shards.dataset import InvalidShardSet
from shards.location import Location
from shards.retry import PROCESS_RETRIES, RetryPolicy, StorageFailure, is_transient, retrying

from conftest import SYNTHETIC_LABELS, write_synthetic_manifest

STREAM = dict(rows_per_batch=1, max_tokens=128, buffer=16, backend="local")


def test_a_policy_of_zero_attempts_is_refused_and_one_attempt_is_one_call():
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        RetryPolicy(attempts=0)
    calls = []

    def failing():
        calls.append(1)
        raise ConnectionResetError("reset")

    with pytest.raises(OSError, match="reset"):
        retrying(failing, "read x", RetryPolicy(attempts=1))
    assert len(calls) == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS])
def test_a_full_or_failing_disk_is_not_transient(code):
    assert not is_transient(OSError(code, os.strerror(code)))
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    disk = OSError(code, os.strerror(code))
    wrapped = RuntimeError("torch.save failed")
    wrapped.__context__ = disk  # raised while handling it, as torch.save does
    assert storage_cause(wrapped) is disk and not is_transient(wrapped)
    wrapped.__suppress_context__ = True  # `raise ... from None`: the chain ends there
    assert storage_cause(wrapped) is None


def test_the_backoff_is_capped_by_the_budget():
    policy = RetryPolicy(timeout_s=300)
    assert [policy.delay(i) for i in (0, 1, 5)] == [0.05, 0.1, 1.6] and policy.delay(20) == 20.0
    assert RetryPolicy(timeout_s=30).delay(20) == 3.0  # a tenth of a short budget


class YieldingInt(int):
    """An int whose addition lets other threads run in the middle of a read-modify-write."""

    def __add__(self, other):
        time.sleep(0.001)
        return YieldingInt(int(self) + int(other))


def test_retries_counted_from_many_threads_are_all_counted(monkeypatch):
    monkeypatch.setattr(PROCESS_RETRIES, "retries", YieldingInt(0))

    def flaky():
        failures = [2]

        def call():
            if failures[0]:
                failures[0] -= 1
                raise ConnectionResetError("reset")
            return "ok"

        return call

    def reader():
        for _ in range(5):
            assert retrying(flaky(), "read x", RetryPolicy(base_s=0)) == "ok"

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert PROCESS_RETRIES.retries == 4 * 5 * 2


def test_two_threads_writing_one_file_each_commit_a_whole_file(tmp_path):
    target, size = Location.of(tmp_path / "state.bin"), 1 << 20
    both_open = threading.Barrier(2)
    errors = []

    def write(byte: bytes) -> None:
        def writer(handle):
            handle.write(byte * size)
            both_open.wait(timeout=10)  # both temporary files are open and written before either commits

        try:
            target.write(writer)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(byte,)) for byte in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.local.read_bytes() in (b"a" * size, b"b" * size)
    assert os.listdir(tmp_path) == ["state.bin"]


def test_probing_a_remote_header_closes_the_remote_file(s3_bucket, tmp_path, monkeypatch):
    manifest = write_synthetic_manifest(tmp_path / "audio", ["hum"])
    url = f"{s3_bucket}/clip00.wav"
    Location.of(url).upload(manifest.parent / "clip00.wav")
    opened, init = [], _ReadRecorder.__init__

    def recording(self, location):
        init(self, location)
        opened.append(self)

    monkeypatch.setattr(_ReadRecorder, "__init__", recording)
    import soundfile

    assert probe(url) == (soundfile.info(manifest.parent / "clip00.wav").frames, 16000)
    assert opened and all(recorder.handle.closed for recorder in opened)


def corrupt_member(shards, target, key_index: int = 5) -> dict:
    """A copy of the shard set with garbage over one member's wav bytes; that member's index row."""
    shutil.copytree(shards, target)
    victim = ShardDataset(target).index("train").to_pylist()[key_index]
    with open(target / "train" / victim["shard"], "r+b") as handle:
        handle.seek(victim["offset"])
        handle.write(b"garbage!" * 8)
    return victim


def test_holes_past_the_failure_budget_stop_the_stream_naming_the_first(synthetic_shards, tmp_path):
    victim = corrupt_member(synthetic_shards, tmp_path / "broken")
    train = tmp_path / "broken" / "train"
    with pytest.raises(FailureBudgetExceeded, match=f"1 sample.* budget of 0 .*{victim['shard']} {victim['key']}"):
        list(PackedStream(train, **STREAM, max_failed=0).epoch(0))
    with pytest.raises(FailureBudgetExceeded, match="budget of 0.25"):
        list(PackedStream(train, **STREAM, max_failed=0.01).epoch(0))  # 1 % of 25 samples
    for allowed in (1, 0.04):  # one hole, or 4 % of 25
        stream = PackedStream(train, **STREAM, max_failed=allowed)
        batches = list(stream.epoch(0))
        assert [f["key"] for b in batches for f in b.failed] == [victim["key"]] and stream.stats[0]["failed"] == 1
    assert TrainConfig().stream().max_failed == 0.001  # the job's default: 0.1 %


def test_a_shard_gone_from_local_disk_mid_run_stops_the_stream_naming_it(synthetic_shards, tmp_path):
    shutil.copytree(synthetic_shards, tmp_path / "set")
    stream = PackedStream(tmp_path / "set" / "train", **STREAM)  # every shard is there when it starts
    (tmp_path / "set" / "train" / "shard-000002.tar").unlink()
    with pytest.raises(StorageFailure, match=f"cannot read {tmp_path / 'set' / 'train' / 'shard-000002.tar'}"):
        list(stream.epoch(0))


def test_the_job_stops_on_failures_no_retry_fixes_wherever_they_lie_in_the_chain(train_job):
    """`final_failure` reads the workers' failures of a failed fit (Ray Train's own error type)."""
    from ray.train import WorkerGroupError

    wrapped = RuntimeError("UDF failed")
    wrapped.__cause__ = StorageFailure("read s3://b/x.tar: the store did not answer")
    for failure, stop in [
        (wrapped, "read s3://b/x.tar: the store did not answer"),
        (FailureBudgetExceeded("3 sample(s) failed"), "3 sample(s) failed"),
        (
            LabelMismatch("checkpoint c.pt was trained on other label ids"),
            "checkpoint c.pt was trained on other label ids",
        ),
        (RuntimeError("a crashed worker"), None),
    ]:
        assert train_job.final_failure(WorkerGroupError("a worker failed", {0: failure})) == stop


def test_a_failed_attempt_is_told_in_one_line_per_failed_rank(train_job):
    """What a quiet run prints of a failure it retries (Ray's own report is off the terminal)."""
    from ray.train import ControllerError, WorkerGroupError

    ranks = {1: RuntimeError("Connection closed by peer\n  at gloo.cc:12"), 0: TimeoutError()}
    assert train_job.failure_cause(WorkerGroupError("2 workers failed", ranks)) == (
        "rank 0: TimeoutError; rank 1: RuntimeError: Connection closed by peer"
    )
    assert train_job.failure_cause(ControllerError(ValueError("bad\nstate"))) == "controller: ValueError: bad"
    long = train_job.failure_cause(WorkerGroupError("1 worker failed", {0: RuntimeError("x" * 400)}))
    assert long == "rank 0: RuntimeError: " + "x" * (train_job.CAUSE_CHARS - len("RuntimeError: ") - 3) + "..."


def test_scoring_no_samples_is_an_error_not_a_zero():
    with pytest.raises(NothingToScore, match="no samples to score"):
        score(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))


@pytest.fixture
def invalid_set(synthetic_shards, tmp_path):
    root = tmp_path / "invalid"
    shutil.copytree(synthetic_shards, root)
    (root / "dataset.json").write_text('{"format_version": 2, "labels": ')
    return root


def test_an_invalid_dataset_json_is_named_by_every_reader(invalid_set, make_shards, train_job, capsys):
    named = f"{invalid_set / 'dataset.json'} is not valid JSON"
    with pytest.raises(InvalidShardSet, match=named):
        ShardDataset(invalid_set)
    with pytest.raises(InvalidShardSet, match=named):
        PackedStream(invalid_set / "train", **STREAM)
    assert named in train_job.prepare_run(TrainConfig(shards=str(invalid_set), out=str(invalid_set.parent / "run")))
    assert make_shards.main(["--verify", str(invalid_set)]) == 1  # a problem in the data
    out = capsys.readouterr().out
    assert named in out and f"{invalid_set}: 1 problem(s)" in out
    assert make_shards.main(["--verify", str(invalid_set.parent / "absent")]) == 2  # no shard set: an argument


def build_args(manifest, out, *flags: str) -> list[str]:
    return ["--manifest", str(manifest), "--out", str(out), "--backend", "local", "--quiet", *flags]


def test_a_duplicate_row_with_another_label_is_reported_as_a_conflict(tmp_path, make_shards, capsys):
    manifest = write_synthetic_manifest(tmp_path / "audio", list(SYNTHETIC_LABELS))
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, "clip00.wav,tone,train", "clip01.wav,tone,train"]) + "\n")
    assert make_shards.main(build_args(manifest, tmp_path / "out")) == 0
    captured = capsys.readouterr()
    skipped = {s["reason"]: s for s in json.loads((tmp_path / "out" / "dataset.json").read_text())["skipped"]}
    conflict = skipped["label conflict"]
    assert conflict["path"].endswith("clip00.wav") and f"{manifest}:5: labelled 'tone'" in conflict["detail"]
    assert f"{manifest}:2 labels the same file and segment 'hum'" in conflict["detail"]
    assert skipped["duplicate"]["path"].endswith("clip01.wav")  # same label: a plain duplicate
    assert "label conflicts: 1 row(s)" in captured.out
    labels = ShardDataset(tmp_path / "out").index("train").to_pydict()
    assert sorted(zip(labels["key"], labels["labels"])) == [
        ("clip00", ["hum"]),
        ("clip01", ["tone"]),
        ("clip02", ["whistle"]),
    ]


def test_a_remote_input_the_store_does_not_serve_fails_the_build_unless_allowed(
    tmp_path, s3_bucket, make_shards, faulty_s3, capsys
):
    audio = write_synthetic_manifest(tmp_path / "audio", list(SYNTHETIC_LABELS)).parent
    rows = ["path,label,split"]
    for i, label in enumerate(SYNTHETIC_LABELS):
        Location.of(f"{s3_bucket}/audio/clip{i:02d}.wav").upload(audio / f"clip{i:02d}.wav")
        rows.append(f"{s3_bucket}/audio/clip{i:02d}.wav,{label},train")
    manifest = tmp_path / "urls.csv"
    manifest.write_text("\n".join(rows) + "\n")
    faulty_s3(poisoned=("clip01.wav",))
    capsys.readouterr()
    assert make_shards.main(build_args(manifest, tmp_path / "strict", "--storage-timeout", "0.5")) == 2
    err = capsys.readouterr().err
    assert "1 input(s) could not be read within the --storage-timeout budget" in err
    assert f"  {s3_bucket}/audio/clip01.wav: " in err and not (tmp_path / "strict").exists()
    flags = ("--storage-timeout", "0.5", "--allow-missing")
    assert make_shards.main(build_args(manifest, tmp_path / "lenient", *flags)) == 0
    meta = json.loads((tmp_path / "lenient" / "dataset.json").read_text())
    assert [(s["path"], s["reason"]) for s in meta["skipped"]] == [
        (f"{s3_bucket}/audio/clip01.wav", "storage unreachable")
    ]
    assert meta["splits"]["train"]["samples"] == 2


@pytest.fixture(params=["local", "s3"])
def checkpoints(request, tmp_path):
    """A checkpoint folder on local disk, or on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "checkpoints")
    request.getfixturevalue("s3_server")
    return f"{request.getfixturevalue('s3_bucket')}/run/checkpoints"


def truncate(location: Location) -> None:
    data = location.read_bytes()
    location.write_bytes(data[: len(data) // 2])


def test_resume_skips_an_unreadable_latest_checkpoint_and_names_it(checkpoints, capsys):
    store = CheckpointStore(checkpoints, keep=2)
    for step in (4, 8):
        store.save({"step": torch.tensor(step)}, 0, step)
    newest, previous = store.complete()[1], store.complete()[0]
    truncate(newest)
    assert store.usable() == previous and int(CheckpointStore.load(previous)["step"]) == 4
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is unreadable (" in err and f"moved aside to {newest.name}{UNREADABLE}" in err
    assert store.complete() == [previous] and Location.of(f"{newest}{UNREADABLE}").exists()
    truncate(previous)
    assert store.usable() is None and store.complete() == []


def test_resume_with_no_usable_checkpoint_stops_with_exit_2(synthetic_shards, tmp_path, train_job, capsys):
    run = tmp_path / "run"
    store = CheckpointStore(run / "checkpoints")
    store.save({"step": torch.tensor(3)}, 0, 3)
    (run / "config.yaml").write_text("{}")
    truncate(store.latest())
    flags = ["--shards", str(synthetic_shards), "--out", str(run), "--valid-split", "train", "--resume"]
    assert train_job.main([*flags, "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {run / 'checkpoints' / 'epoch-0000-step-0000003.pt'} is unreadable" in err
    assert f"error: --resume: none of the 1 checkpoint(s) in {run / 'checkpoints'} loads" in err


def test_resume_keeps_what_the_run_learns_and_may_change_how_it_runs(synthetic_shards, tmp_path, train_job, capsys):
    """Another shard set, seed or resolution would train the checkpoint on other data or labels:
    refused by name, the run folder untouched. Ranks, epochs, loader and logging may change."""
    run = tmp_path / "run"
    flags = ["--shards", str(synthetic_shards), "--out", str(run), "--valid-split", "train", "--wandb", "disabled"]
    assert isinstance(train_job.prepare_run(train_job.parse_args(flags)), TrainConfig)
    CheckpointStore(run / "checkpoints").save({"step": torch.tensor(3)}, 0, 3)
    recorded = (run / "config.yaml").read_text()
    assert train_job.main([*flags, "--resume", "--seed", "1", "--scales", "1", "2", "--workers", "2"]) == 2
    expected = (
        f"error: --resume: {run} was started with other settings, which decide what it learns: "
        "--seed 0 (now 1), --scales 1.0 (now 1.0 2.0). Resume with the run's own (its config.yaml), "
        "or start a new run in another --out"
    )
    assert capsys.readouterr().err.splitlines() == [expected]
    other = tmp_path / "other"
    shutil.copytree(synthetic_shards, other)
    assert train_job.main([*flags[:1], str(other), *flags[2:], "--resume"]) == 2
    assert f"--shards {synthetic_shards} (now {other})" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == recorded
    how = ["--workers", "2", "--epochs", "9", "--stop-after", "1", "--loader", "local", "--verbose"]
    resumed = train_job.prepare_run(train_job.parse_args([*flags, "--resume", *how, "--max-failures", "0"]))
    assert isinstance(resumed, TrainConfig) and (resumed.workers, resumed.epochs) == (2, 9)
    shutil.move(run, tmp_path / "moved")  # a run folder moved is still the run
    moved_run = [*flags[:3], str(tmp_path / "moved"), *flags[4:], "--resume"]
    assert isinstance(train_job.prepare_run(train_job.parse_args(moved_run)), TrainConfig)


def test_a_shard_set_rebuilt_with_other_labels_is_refused_before_any_state_is_restored(synthetic_shards, tmp_path):
    """Same path, same flags, other labels: the checkpoint's class ids would mean other classes."""
    from jobs.train_worker import restore_state

    stream = PackedStream(synthetic_shards / "train", **STREAM)
    assert stream.sources.label_map == {"shards": {"hum": 0, "tone": 1, "whistle": 2}}  # named after the set
    store = CheckpointStore(tmp_path / "checkpoints")
    saved = store.save({"label_map": {"shards": {"hum": 0, "whistle": 1, "wind": 2}}}, 0, 3)
    with pytest.raises(LabelMismatch) as refused:
        restore_state(saved, None, None, None, 0, 1, stream)  # stops before touching the model
    assert str(refused.value) == (
        f"checkpoint {saved} was trained on other label ids than --shards now give: "
        "shards: [hum, whistle, wind] (now [hum, tone, whistle]); resume on the shard sets as they were, or start a new run"
    )


def test_rotation_on_a_full_disk_removes_the_oldest_first(small_disk, capsys):
    """A 12 MiB disk holds two 5 MiB states, not three: the third checkpoint is written once the
    oldest is gone, and the two latest remain."""
    store = CheckpointStore(small_disk / "checkpoints", keep=2)
    state = lambda step: {"step": step, "weights": torch.full((5 * 2**20 // 4,), float(step))}  # noqa: E731
    for step in (1, 2, 3):
        store.save(state(step), 0, step)
    assert [c.name for c in store.complete()] == [CheckpointStore.name(0, 2), CheckpointStore.name(0, 3)]
    assert float(CheckpointStore.load(store.latest())["weights"][0]) == 3.0
    assert f"removing the oldest ({CheckpointStore.name(0, 1)}) first" in capsys.readouterr().err
    assert sorted(os.listdir(small_disk / "checkpoints")) == [c.name for c in store.complete()]
