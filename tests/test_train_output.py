"""What a training run prints: our own lines only, whatever other Ray instances run on the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

TINY = ["--depth", "1", "--rows-per-batch", "1", "--max-tokens", "512", "--epochs", "1", "--loader", "local"]
OUR_LINES = (
    r"training elasticast \(tiny\) on \S+: 1 worker\(s\), CPU, 1 epochs -> \S+",
    r"epoch 1/1 \| loss [\d.]+ \| .* \| val accuracy [\d.]+ \| .*",
    r"done: best val_metric [\d.]+ \(test\) at epoch 1; final [\d.]+; inference checkpoint \S+best\.pt",
    r"failed samples \(holes left as padding, over 1 epoch\(s\)\): train 0, validation \(test\) 0",
)


@pytest.mark.slow
def test_two_runs_at_once_each_on_its_own_ray_print_our_lines_only(tmp_path, make_shards):
    """Two `jobs/train.py` started together, each starting a local Ray instance of its own while the
    other's runs: both finish, and each prints the start line, the epoch line and the summary,
    nothing else: no traceback (with a guessed address, Ray Train's placement-group cleaner dies on
    "multiple active Ray instances") and none of Ray's lines. (`--verbose`, which shows Ray's lines,
    is tested by the `ray job submit` test in test_train_job.py.)"""
    shards = tmp_path / "demo"
    assert make_shards.main(["--out", str(shards), "--demo-clips", "40", "--backend", "local", "--quiet"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    runs = {
        name: subprocess.Popen(
            [sys.executable, "jobs/train.py", "--shards", str(shards), "--out", str(tmp_path / name)]
            + ["--valid-split", "test", "--wandb", "disabled", *TINY],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("first", "second")
    }
    outputs = {name: run.communicate(timeout=500)[0] for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, outputs[name][-3000:]
        lines = outputs[name].splitlines()
        assert len(lines) == len(OUR_LINES), outputs[name][-3000:]
        for line, pattern in zip(lines, OUR_LINES):
            assert re.fullmatch(pattern, line), (line, outputs[name][-3000:])
