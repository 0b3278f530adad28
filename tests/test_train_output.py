"""What a training run prints: our own lines only, whatever other Ray instances run on the machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO

TINY = ["--depth", "1", "--rows-per-batch", "1", "--max-tokens", "512", "--epochs", "1", "--loader", "local"]
OUR_LINES = (
    r"training elasticast \(tiny\) on \S+: 1 worker\(s\), CPU, 1 epochs -> \S+",
    r"epoch 1/1 \| loss [\d.]+ \| .* \| val accuracy [\d.]+ \| .*",
    r"done: best val_metric [\d.]+ \(test\) at epoch 1; final [\d.]+; inference checkpoint \S+best\.pt",
)


def test_two_runs_at_once_each_on_its_own_ray_print_only_our_lines(tmp_path, make_shards):
    """Two `jobs/train.py` started together, each starting a local Ray instance of its own while the
    other's runs (and any other Ray on the machine): both finish, and print the start line, the
    epoch line and the summary, nothing else: no Ray log lines, no traceback."""
    shards = tmp_path / "demo"
    assert make_shards.main(["--out", str(shards), "--demo-clips", "40", "--backend", "local", "--quiet"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    runs = [
        subprocess.Popen(
            [sys.executable, "jobs/train.py", "--shards", str(shards), "--out", str(tmp_path / name)]
            + ["--valid-split", "test", "--wandb", "disabled", *TINY],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    for run in runs:
        output = run.communicate(timeout=500)[0]
        assert run.returncode == 0, output[-3000:]
        lines = output.splitlines()
        assert len(lines) == len(OUR_LINES), output[-3000:]
        for line, pattern in zip(lines, OUR_LINES):
            assert re.fullmatch(pattern, line), (line, output[-3000:])
