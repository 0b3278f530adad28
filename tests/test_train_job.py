"""`jobs/train.py` end to end: real Ray Train, real FSDD shards, resume, a 2-node cluster, a fault."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from ray.job_submission import JobStatus, JobSubmissionClient

from elasticast import Classifier, load_checkpoint
from elasticast.checkpoint import CheckpointStore
from elasticast.training.config import TrainConfig
from jobs import evaluate as evaluate_job
from shards.inputs import write_manifest

from conftest import write_fsdd_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# a 1-block model in 512-token rows: ~24 steps per epoch of fsdd_small_shards, a checkpoint every 4
STEPS = [
    "--depth",
    "1",
    "--rows-per-batch",
    "1",
    "--max-tokens",
    "512",
    "--buffer",
    "256",
    "--warmup-epochs",
    "0.5",
    "--lr",
    "2e-3",
    "--checkpoint-every",
    "4",
]
PORT, DASHBOARD, AGENT_PORTS = 6391, 8291, 52460
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


def agent_ports(first: int) -> list[str]:
    """Each node's agents on their own ports: the defaults are taken by any other Ray on this
    machine (the session's own), and a job needs its head's agent."""
    names = (
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    return [item for i, name in enumerate(names) for item in (name, str(first + i))]


def history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


def key_files(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "keys").glob("epoch-*.json"))]


def test_a_run_stopped_by_a_full_disk_then_killed_mid_epoch_resumes_bitwise(
    tmp_path, small_disk, fsdd_dir, fsdd_small_shards, ray_local, train_job, capfd
):
    """Uninterrupted vs. one run through two faults. On a 12 MiB disk the second step checkpoint
    does not fit: the run stops once (exit 2, no retry) keeping the first; a read-only disk is
    refused; on a larger disk the resumed driver is killed (SIGKILL, with its Ray Train worker)
    once a mid-epoch checkpoint of epoch 2 exists, and resumed from that very checkpoint it ends
    bitwise equal to the uninterrupted run. With the paper's augmentations on (token dropout,
    random cuts, noise, mixup, balanced sampling: all keyed, so the resume stays bitwise)."""
    recipe = ["--token-dropout", "0.1", "--random-cut", "32", "--noise", "--mixup", "0.5", "--sampling", "balanced"]
    args = ["--shards", str(fsdd_small_shards), *STEPS, "--epochs", "2", "--loader", "local", *recipe]
    full, run = tmp_path / "full", small_disk / "run"
    assert train_job.main([*args, "--out", str(full), "--wandb", "offline"]) == 0
    faulty = [*args, "--out", str(run), "--wandb", "disabled"]
    capfd.readouterr()
    assert train_job.main(faulty) == 2  # --max-failures 1 (default): a storage failure is not retried
    output = capfd.readouterr()
    error = [line for line in output.err.splitlines() if line.startswith("error:")]
    expected = f"error: cannot write {run}/checkpoints/epoch-0000-step-0000008.pt: No space left on device; stopped (a retry would fail the same way)"
    assert error == [expected], output.err[-3000:]
    assert "restarting" not in output.out + output.err
    store = CheckpointStore(run / "checkpoints")
    assert [p.name for p in store.complete()] == ["epoch-0000-step-0000004.pt"]
    assert sorted(os.listdir(store.folder)) == [p.name for p in store.complete()]
    assert not (run / "history.json").exists()  # no epoch claimed done
    remount(small_disk, "ro")
    assert train_job.main([*faulty, "--resume"]) == 2
    assert f"error: cannot write to --out {run}: Read-only file system" in capfd.readouterr().err
    remount(small_disk, "rw,size=64m")
    killed_at = kill_mid_epoch(ray_local, [*faulty, "--resume"], epoch=1)
    assert store.latest() == killed_at and len(history(run)) == 1
    assert not (run / "keys" / "epoch-001.json").exists()
    capfd.readouterr()
    assert train_job.main([*faulty, "--resume"]) == 0
    step = int(killed_at.name.removesuffix(".pt").split("-step-")[1])
    assert f"resuming from checkpoint {killed_at.name}: epoch 2, step {step}" in capfd.readouterr().out
    assert len(history(full)) == len(history(run)) == 2
    assert [without_timings(m) for m in history(full)] == [without_timings(m) for m in history(run)]  # floats exactly
    assert [k["delivered_digest"] for k in key_files(full)] == [k["delivered_digest"] for k in key_files(run)]
    assert all(k["exactly_once"] for k in key_files(run))
    weights = [load_checkpoint(folder / "last.pt").state_dict for folder in (full, run)]
    assert all(torch.equal(value, weights[1][name]) for name, value in weights[0].items())
    assert len(store.complete()) == 2 and store.latest().name == "epoch-0002-step-0000000.pt"
    assert not [name for name in store.folder.names() if name.startswith(".")]  # num_to_keep, after both faults
    summary = json.loads((full / "metrics.json").read_text())
    assert summary["epochs_run"] == 2 and summary["config"]["epochs"] == 2 and summary["valid_split"] == "test"
    assert list((full / "wandb").glob("offline-run-*"))  # wandb ran, offline, under the run folder
    prediction = Classifier.from_checkpoint(full / "best.pt").predict([fsdd_dir / "3_jackson_7.wav"])[0]
    assert prediction.label in [str(d) for d in range(10)] and abs(prediction.probabilities.sum() - 1) < 1e-5
    # the run folder now holds a run: a second start without --resume is refused
    assert train_job.main([*args, "--out", str(full)]) == 2


@pytest.fixture(scope="module")
def fsdd_other_shards(tmp_path_factory, fsdd_dir, make_shards) -> Path:
    """Every 13th FSDD recording (231), a second shard set to mix with `fsdd_small_shards`."""
    work = tmp_path_factory.mktemp("fsdd_other")
    manifest = write_fsdd_manifest(fsdd_dir, work / "manifest.csv", every=13)
    out = work / "shards"
    assert make_shards.main(["--manifest", str(manifest), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    return out


def test_a_mix_killed_mid_epoch_on_three_workers_resumes_on_two_with_every_key_once(
    tmp_path, fsdd_small_shards, fsdd_other_shards, ray_local, train_job, capfd
):
    """Two shard sets mixed 0.7 / 0.3; 3 Ray Train workers killed after a step checkpoint, resumed
    with --workers 2: the epoch's remaining batches are dealt to the 2 ranks, every planned sample
    once across both runs; the history reports the realised mix and a metric per source. Trained,
    validated and evaluated with --featurize device (the loaders ship waveforms; the trainer featurizes).
    The killed driver runs with --verbose: Ray's own lines are printed among ours."""
    run = tmp_path / "run"
    args = ["--shards", str(fsdd_small_shards), str(fsdd_other_shards), "--weights", "0.7", "0.3", "--out", str(run)]
    args += [*STEPS, "--epochs", "1", "--loader", "local", "--cpus-per-worker", "0.5", "--wandb", "disabled"]
    args += ["--featurize", "device"]
    driver = tmp_path / "driver.log"
    killed_at = kill_mid_epoch(ray_local, [*args, "--workers", "3", "--verbose"], epoch=0, output=driver)
    assert killed_at.name == "epoch-0000-step-0000012.pt"  # 4 steps of 3 ranks: 12 batches of the plan consumed
    printed = driver.read_text()
    assert "training elasticast (tiny)" in printed and "Started training worker group of size 3" in printed, printed
    assert train_job.main([*args, "--workers", "2", "--resume"]) == 0
    assert "epoch 1, step 6 (written by 3 ranks, its remaining batches dealt to 2)" in capfd.readouterr().out
    (counts,) = key_files(run)
    (metrics,) = history(run)
    assert counts["exactly_once"] and counts["delivered"] == sum(m["samples"] for m in metrics["mix"].values())
    assert [round(m["share"], 2) for m in metrics["mix"].values()] == [0.7, 0.3]
    assert metrics["val_samples/0:shards"] == 60 and metrics["val_samples/1:shards"] + 60 == metrics["val_samples"]
    assert {"val_metric/0:shards", "val_metric/1:shards"} <= set(metrics)
    for source, shards in enumerate((fsdd_small_shards, fsdd_other_shards)):  # the mixed model, per source
        out = tmp_path / f"eval-{source}"
        argv = ["--checkpoint", str(run / "best.pt"), "--shards", str(shards / "test"), "--out", str(out)]
        assert evaluate_job.main([*argv, "--sweeps", "length", "--lengths", "64", "--featurize", "device"]) == 0
        with (out / "results.csv").open() as handle:
            native = next(row for row in csv.DictReader(handle) if row["point"] == "native")
        assert float(native["metric"]) == pytest.approx(metrics[f"val_metric/{source}:shards"], abs=1e-6)


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("samples_per_s", "tokens_per_s", "data_wait", "epoch_s")}


def kill_mid_epoch(ray, argv: list[str], epoch: int, output: Path | None = None) -> Path:
    """Run jobs/train.py as its own driver on the session's Ray; SIGKILL it and its Ray Train
    worker as soon as a checkpoint inside `epoch` (0-based) is committed. Returns that checkpoint;
    the driver's output goes to the file `output`, if given."""
    run = Path(argv[argv.index("--out") + 1])
    env = os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    started = time.time()
    sink = output.open("w") if output else subprocess.DEVNULL
    driver = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "train.py"), *argv],
        env=env,
        cwd=REPO,
        stdout=sink,
        stderr=subprocess.STDOUT,
    )
    store, deadline = CheckpointStore(run / "checkpoints"), time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        latest = store.latest()
        if mid_epoch(latest, epoch):
            break
        time.sleep(0.02)
    assert driver.poll() is None, (
        f"the driver ended (status {driver.returncode}) before a checkpoint inside epoch {epoch + 1}"
    )
    assert mid_epoch(latest, epoch), f"no checkpoint inside epoch {epoch + 1} within the deadline (latest: {latest})"
    own = [
        p.as_dict(["pid", "cmdline", "create_time"], ad_value=None) for p in psutil.Process().children(recursive=True)
    ]
    workers = [  # of this session's Ray (its raylet is a child of this process), not of another Ray on the machine
        psutil.Process(p["pid"])
        for p in own
        if "RayTrainWorker" in " ".join(p["cmdline"] or []) and (p["create_time"] or 0) >= started - 1
    ]
    driver.kill()
    for worker in workers:
        worker.kill()
    driver.wait(timeout=30)
    psutil.wait_procs(workers, timeout=30)
    if output:
        sink.close()
    return latest


def mid_epoch(checkpoint, epoch: int) -> bool:
    """A checkpoint inside `epoch` (0-based): epoch-000E-step-000000N.pt with N > 0."""
    return (
        checkpoint is not None
        and checkpoint.name.startswith(f"epoch-{epoch:04d}-")
        and not checkpoint.name.endswith("-step-0000000.pt")
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shards", "/nonexistent/shards"], "not a make_shards output"),
        (["--resume"], "no run to resume"),
        (["--workers", "8"], "the Ray cluster has 2"),
    ],
)
def test_bad_runs_are_refused_before_training(
    tmp_path, fsdd_small_shards, ray_local, train_job, capsys, flags, message
):
    args = ["--shards", str(fsdd_small_shards), "--out", str(tmp_path / "run"), *flags]
    assert train_job.main(args) == 2
    assert message in capsys.readouterr().err


def remount(disk: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], check=True)


def test_resume_without_a_complete_checkpoint_is_refused(tmp_path, fsdd_small_shards, train_job, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("epochs: 2\n")
    (run / "checkpoints" / ".tmp-epoch-0000-step-0000004.pt.123").write_bytes(
        b"cut short"
    )  # a crashed writer's leftover
    assert train_job.main(["--shards", str(fsdd_small_shards), "--out", str(run), "--resume"]) == 2
    assert "holds no complete checkpoint, so there is nothing to continue from" in capsys.readouterr().err


def test_training_validates_on_valid_and_falls_back_to_test_with_a_warning(
    tmp_path, fsdd_dir, fsdd_small_shards, make_shards, train_job, capsys
):
    rows = [{"path": str(p), "label": p.name.split("_")[0]} for p in sorted(fsdd_dir.glob("*.wav"))[::60]]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    shards = tmp_path / "shards"
    flags = ["--test-fraction", "0.2", "--valid-fraction", "0.25", "--backend", "local", "--quiet"]
    assert make_shards.main(["--manifest", str(manifest), "--out", str(shards), *flags]) == 0
    splits = json.loads((shards / "dataset.json").read_text())["splits"]
    assert set(splits) == {"train", "valid", "test"}
    config = train_job.prepare_run(TrainConfig(shards=str(shards), out=str(tmp_path / "a")))
    assert config.valid_split == "valid" and "WARNING" not in capsys.readouterr().err
    config = train_job.prepare_run(TrainConfig(shards=str(fsdd_small_shards), out=str(tmp_path / "b")))
    assert config.valid_split == "test" and "has no 'valid' split: validating on 'test'" in capsys.readouterr().err
    assert "valid_split: test" in (tmp_path / "b" / "config.yaml").read_text()


@pytest.fixture(scope="module")
def two_node_cluster():
    """`ray start --head` plus a second `ray start --address`, each with its own 2 CPUs; stopped
    at the end by killing exactly the processes of this cluster (not the session's own Ray)."""
    temp = tempfile.mkdtemp(prefix="ecr", dir="/tmp")  # short: Ray's socket paths live under it
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }  # a throwaway cluster on one machine
    start = [str(BIN / "ray"), "start", "--num-cpus", "2", "--temp-dir", temp]
    subprocess.run(
        [
            *start,
            "--head",
            "--port",
            str(PORT),
            "--dashboard-port",
            str(DASHBOARD),
            "--include-dashboard",
            "true",
            *agent_ports(AGENT_PORTS),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*start, "--address", f"127.0.0.1:{PORT}", "--resources", '{"second_node": 1}', *agent_ports(AGENT_PORTS + 10)],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        yield env | {"RAY_ADDRESS": f"http://127.0.0.1:{DASHBOARD}"}, temp
    finally:
        kill_cluster(temp)


def kill_cluster(temp: str) -> None:
    """Kill the processes of the cluster under `temp`: those naming it (the client server by its
    port) or working in it, and every process they started (the nodes' agents, renamed
    `ray::DashboardAgent` and the like, name neither, and outlive their raylet)."""
    own = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if temp in command or f":{PORT} " in command or _cwd_under(process, temp):
            own.append(process)
    for process in list(own):
        try:
            own += process.children(recursive=True)
        except psutil.Error:
            pass
    for process in own:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(own, timeout=30)
    shutil.rmtree(temp, ignore_errors=True)


def _cwd_under(process: psutil.Process, folder: str) -> bool:
    try:
        return process.cwd().startswith(folder)
    except psutil.Error:
        return False


def ray_cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def submit(env: dict, run: Path, shards: Path, epochs: int, *more: str) -> subprocess.CompletedProcess:
    """`ray job submit --no-wait` of a training run; returns once the job is accepted."""
    command = [
        "job",
        "submit",
        "--working-dir",
        str(REPO),
        "--no-wait",
        "--",
        "python",
        "jobs/train.py",
        "--shards",
        str(shards),
        "--out",
        str(run),
        "--workers",
        "2",
        "--epochs",
        str(epochs),
        "--wandb",
        "disabled",  # wandb's offline mode is checked by the bitwise test: here it would start its service twice
        *STEPS,
        *more,
    ]
    for _ in range(30):  # the job agent comes up some seconds after `ray start` returns
        done = ray_cli(env, *command)
        if "No available agent to submit job" not in done.stdout + done.stderr:
            return done
        time.sleep(2)
    return done


# What a quiet run prints, whatever other Ray instances run on the machine: our own lines only.
TINY = ["--depth", "1", "--rows-per-batch", "1", "--max-tokens", "512", "--epochs", "1", "--loader", "local"]
OUR_LINES = (
    r"training elasticast \(tiny\) on \S+: 1 worker\(s\), CPU, 1 epochs -> \S+",
    r"epoch 1/1 \| loss [\d.]+ \| .* \| val accuracy [\d.]+ \| .*",
    r"done: best val_metric [\d.]+ \(test\) at epoch 1; final [\d.]+; inference checkpoint \S+best\.pt",
    r"failed samples \(holes left as padding, over 1 epoch\(s\)\): train 0, validation \(test\) 0",
)
OUR_JOB_LINES = (  # a restart and the resume it makes, besides the lines above
    r"training elasticast \(tiny\) on \S+: 2 worker\(s\), CPU, 1 epochs -> \S+",
    r"attempt 1 failed \(rank \d: \w+: .*\); restarting from the latest checkpoint \(retry 1 of --max-failures 1\)",
    r"resuming from checkpoint epoch-0000-step-\d+\.pt: epoch 1, step \d+",
    *OUR_LINES[1:],
)


def test_ray_job_submit_on_two_nodes_survives_a_killed_worker_while_a_local_run_runs_and_both_print_our_lines_only(
    tmp_path, fsdd_small_shards, two_node_cluster
):
    """`ray job submit` on a two-node cluster; one Ray Train worker is killed once the epoch's first
    mid-epoch checkpoint exists: the worker group restarts from it, at its step, and the run
    finishes with every key once. Meanwhile a `jobs/train.py` on the same machine starts a local
    Ray instance of its own and trains. Both print our lines only: no traceback (with a guessed
    address, Ray Train's placement-group cleaner dies on "multiple active Ray instances") and none
    of Ray's lines. (`--verbose`, which shows Ray's lines, is tested on the driver that the mix
    test kills.)"""
    env, temp = two_node_cluster
    run = tmp_path / "run"
    # greedy packing: first-fit's kernel takes Numba ~6 s to compile in each process, and its
    # on-disk cache does not survive the job's unpacked copy of the repository (new file times)
    more = ["--checkpoint-every", "2", "--packing", "greedy", "--valid-split", "test"]
    submitted = submit(env, run, fsdd_small_shards, 1, *more)
    job_id = next(line.split("'")[1] for line in submitted.stdout.splitlines() if "submitted successfully" in line)
    local = subprocess.Popen(
        [sys.executable, "jobs/train.py", "--shards", str(fsdd_small_shards), "--out", str(tmp_path / "local")]
        + ["--valid-split", "test", "--wandb", "disabled", *TINY],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while CheckpointStore(run / "checkpoints").latest() is None and time.time() < deadline:
        time.sleep(0.2)
    victims = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and _cwd_under(p, temp)
    ]
    assert victims, "no Ray Train worker of this cluster found to kill"
    victims[0].kill()
    jobs = JobSubmissionClient(env["RAY_ADDRESS"])  # polled over HTTP: a `ray job status` is a Python start each
    while (status := jobs.get_job_status(job_id)) not in TERMINAL and time.time() < deadline + 300:
        time.sleep(1)
    logs = jobs.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    ours = logs.split("Running entrypoint for job ", 1)[1].split("\n", 1)[1]  # after Ray's header of the job's log
    assert_lines(ours, OUR_JOB_LINES)  # the restart resumes mid-epoch, not from the start
    assert len(history(run)) == 1 and (run / "best.pt").is_file()
    counts = key_files(run)
    assert len(counts) == 1 and all(c["exactly_once"] and c["delivered"] == c["expected"] for c in counts)
    output = local.communicate(timeout=300)[0]
    assert local.returncode == 0, output[-3000:]
    assert_lines(output, OUR_LINES)


def assert_lines(output: str, patterns: tuple[str, ...]) -> None:
    """`output` is exactly one line per pattern, in order."""
    lines = output.splitlines()
    assert len(lines) == len(patterns), output[-3000:]
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), (line, output[-3000:])
