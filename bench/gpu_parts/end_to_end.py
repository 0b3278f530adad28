"""End to end: `jobs/train.py` on a shard set built here (VoxCeleb-like lengths), in this process
(it joins the Ray instance running here, or starts one), with its own history as the measurement."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from jobs import train

from gpu_parts.common import Sizes
from loader import make_corpus  # bench/loader.py


def arguments(sizes: Sizes, device: torch.device, shards: Path, out: Path, loader_workers: int) -> list[str]:
    """CUDA: the preset, a Ray Data loader with `loader_workers` tasks of 1 CPU; CPU (smoke): the
    tiny preset and the in-process loader."""
    common = [
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--epochs",
        str(sizes.e2e_epochs),
        "--wandb",
        "disabled",
        "--rows-per-batch",
        str(sizes.rows),
        "--max-tokens",
        str(sizes.length),
        "--warmup-epochs",
        "0.5",
    ]
    if device.type == "cuda":
        return [
            *common,
            "--device",
            "cuda",
            "--preset",
            sizes.preset["name"],
            "--loader",
            "ray",
            "--loader-workers",
            str(loader_workers),
            "--cpus-per-worker",
            "2",
        ]
    return [*common, "--device", "cpu", "--preset", "tiny", "--loader", "local", "--threads", "1"]


def run(sizes: Sizes, device: torch.device, work: Path, loader_workers: int | None = None) -> dict:
    loader_workers = loader_workers or max(1, (os.cpu_count() or 4) - 4)
    shards = make_corpus(work / "e2e", sizes.e2e_clips, test_every=10).parent
    out = work / "e2e-run"
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the trainer is another process on the same GPU
    started = time.perf_counter()
    code = train.main(arguments(sizes, device, shards, out, loader_workers))
    wall = time.perf_counter() - started
    if code != 0:
        return {"failed": f"jobs/train.py exited with {code}", "wall_s": wall}
    epochs = [
        {
            name: m[name]
            for name in ("epoch", "tokens_per_s", "samples_per_s", "data_wait", "epoch_s", "pad_ratio", "val_metric")
        }
        for m in json.loads((out / "history.json").read_text())
    ]
    return {"wall_s": wall, "loader_workers": loader_workers if device.type == "cuda" else 0, "epochs": epochs}
