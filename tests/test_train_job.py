"""`jobs/train.py` end to end: real Ray Train, real FSDD shards, resume, a 2-node cluster, a fault."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch

from elasticast import Classifier, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAST = ["--rows-per-batch", "2", "--max-tokens", "1024", "--buffer", "256", "--warmup-epochs", "0.5", "--lr", "2e-3"]
PORT, DASHBOARD, AGENT_PORTS = 6391, 8291, 52460


def agent_ports(first: int) -> list[str]:
    """Each node's agents on their own ports: the defaults are taken by any other Ray on this
    machine (the session's own), and a job needs its head's agent."""
    names = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [item for i, name in enumerate(names) for item in (name, str(first + i))]


def history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


def key_files(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "keys").glob("epoch-*.json"))]


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, fsdd_dir, fsdd_small_shards, ray_local, train_job):
    args = ["--shards", str(fsdd_small_shards), *FAST, "--epochs", "2", "--loader", "local", "--wandb", "offline"]
    assert train_job.main([*args, "--out", str(tmp_path / "full")]) == 0
    assert train_job.main([*args, "--out", str(tmp_path / "cut"), "--stop-after", "1"]) == 0
    assert len(history(tmp_path / "cut")) == 1 and not (tmp_path / "cut" / "keys" / "epoch-001.json").exists()
    assert train_job.main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    full, cut = history(tmp_path / "full"), history(tmp_path / "cut")
    assert len(full) == len(cut) == 2
    for a, b in zip(full, cut):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4) and a["val_metric"] == pytest.approx(b["val_metric"], abs=0.02)
    assert [k["delivered_digest"] for k in key_files(tmp_path / "full")] == [k["delivered_digest"] for k in key_files(tmp_path / "cut")]
    assert all(k["exactly_once"] for k in key_files(tmp_path / "full"))
    weights = [load_checkpoint(tmp_path / run / "last.pt").state_dict for run in ("full", "cut")]
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-4), name
    summary = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert summary["epochs_run"] == 2 and summary["config"]["epochs"] == 2
    assert list((tmp_path / "full" / "wandb").glob("offline-run-*"))  # wandb ran, offline, under the run folder
    prediction = Classifier.from_checkpoint(tmp_path / "full" / "best.pt").predict([fsdd_dir / "3_jackson_7.wav"])[0]
    assert prediction.label in [str(d) for d in range(10)] and abs(prediction.probabilities.sum() - 1) < 1e-5
    # the run folder now holds a run: a second start without --resume is refused
    assert train_job.main([*args, "--out", str(tmp_path / "full")]) == 2


@pytest.mark.parametrize("flags, message", [
    (["--shards", "/nonexistent/shards"], "not a make_shards output"),
    (["--resume"], "no run to resume"),
    (["--workers", "8"], "the Ray cluster has 2"),
])
def test_bad_runs_are_refused_before_training(tmp_path, fsdd_small_shards, ray_local, train_job, capsys, flags, message):
    args = ["--shards", str(fsdd_small_shards), "--out", str(tmp_path / "run"), *flags]
    assert train_job.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_node_cluster():
    """`ray start --head` plus a second `ray start --address`, each with its own 2 CPUs; stopped
    at the end by killing exactly the processes of this cluster (not the session's own Ray)."""
    temp = tempfile.mkdtemp(prefix="ecr", dir="/tmp")  # short: Ray's socket paths live under it
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
                      "RAY_AUTH_MODE": "disabled"}  # a throwaway cluster on one machine
    start = [str(BIN / "ray"), "start", "--num-cpus", "2", "--temp-dir", temp]
    subprocess.run([*start, "--head", "--port", str(PORT), "--dashboard-port", str(DASHBOARD), "--include-dashboard", "true",
                    *agent_ports(AGENT_PORTS)], env=env, check=True, capture_output=True)
    subprocess.run([*start, "--address", f"127.0.0.1:{PORT}", "--resources", '{"second_node": 1}', *agent_ports(AGENT_PORTS + 10)],
                   env=env, check=True, capture_output=True)
    try:
        yield env | {"RAY_ADDRESS": f"http://127.0.0.1:{DASHBOARD}"}, temp
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if any(temp in part for part in process.info["cmdline"] or []) or _cwd_under(process, temp):
                process.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _cwd_under(process: psutil.Process, folder: str) -> bool:
    try:
        return process.cwd().startswith(folder)
    except psutil.Error:
        return False


def ray_cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def submit(env: dict, run: Path, shards: Path, epochs: int, wait: bool) -> subprocess.CompletedProcess:
    command = ["job", "submit", "--working-dir", str(REPO), *([] if wait else ["--no-wait"]), "--",
               "python", "jobs/train.py", "--shards", str(shards), "--out", str(run), "--workers", "2",
               "--epochs", str(epochs), "--wandb", "offline", *FAST]
    for _ in range(30):  # the job agent comes up some seconds after `ray start` returns
        done = ray_cli(env, *command)
        if "No available agent to submit job" not in done.stdout + done.stderr:
            return done
        time.sleep(2)
    return done


def test_ray_job_submit_on_a_two_node_cluster_trains_every_key_once(tmp_path, fsdd_small_shards, two_node_cluster):
    env, _ = two_node_cluster
    done = submit(env, tmp_path / "run", fsdd_small_shards, epochs=2, wait=True)
    assert "succeeded" in done.stdout.lower(), done.stdout[-3000:] + done.stderr[-3000:]
    runs = history(tmp_path / "run")
    assert len(runs) == 2 and runs[1]["train_loss"] < runs[0]["train_loss"]
    assert list((tmp_path / "run" / "ray").glob("checkpoint_*")) and (tmp_path / "run" / "best.pt").is_file()
    counts = key_files(tmp_path / "run")
    assert len(counts) == 2 and all(c["exactly_once"] and c["delivered"] == c["expected"] for c in counts)


def test_a_killed_worker_is_replaced_and_the_run_finishes(tmp_path, fsdd_small_shards, two_node_cluster):
    env, temp = two_node_cluster
    run = tmp_path / "run"
    submitted = submit(env, run, fsdd_small_shards, epochs=3, wait=False)
    job_id = next(line.split("'")[1] for line in submitted.stdout.splitlines() if "submitted successfully" in line)
    deadline = time.time() + 300
    while not list((run / "ray").glob("checkpoint_*")) and time.time() < deadline:
        time.sleep(1)
    time.sleep(2)  # into epoch 2
    victims = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and _cwd_under(p, temp)]
    assert victims, "no Ray Train worker of this cluster found to kill"
    victims[0].kill()
    while time.time() < deadline + 300:
        status = ray_cli(env, "job", "status", job_id).stdout.upper()
        if any(word in status for word in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = ray_cli(env, "job", "logs", job_id).stdout
    assert "SUCCEEDED" in status, logs[-3000:]
    assert "resuming from the checkpoint after epoch" in logs, logs[-3000:]
    assert len(history(run)) == 3 and all(c["exactly_once"] for c in key_files(run))
