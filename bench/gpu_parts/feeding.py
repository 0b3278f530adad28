"""Feeding the GPU: the loader's production per CPU core (the whole stream: read, decode, fbank,
patchify, packed placement; one process, one torch thread) against the trainer's measured
consumption, in useful tokens/s and seconds of audio/s, at C = 1 and at random C."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from loaders import PackedStream

from gpu_parts.common import Sizes
from gpu_parts.speed import RANDOM_C
from loader import make_corpus  # bench/loader.py

GPUS_PER_NODE = 8


def production_per_core(split_dir: Path, sizes: Sizes, scales: tuple[float, ...]) -> dict:
    """One epoch of the local-backend stream in this process on one torch thread."""
    stream = PackedStream(split_dir, rows_per_batch=sizes.rows, max_tokens=sizes.length, scales=scales, backend="local")
    stream.plan(0)  # the packer's kernels load before the clock starts
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        for _ in stream.epoch(0):
            pass
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    audio_s = float((stream.index["num_samples"] / stream.index["sample_rate"]).sum())
    tokens = stream.stats[0]["tokens"]
    return {
        "tokens_per_s": tokens / seconds,
        "audio_s_per_s": audio_s / seconds,
        "tokens_per_audio_s": tokens / audio_s,
    }


def corpus(work: Path, sizes: Sizes) -> Path:
    """The train split of the VoxCeleb-like corpus (`sizes.loader_clips` clips), made once per run."""
    split_dir = work / "feeding" / "shards" / "train"
    return split_dir if split_dir.is_dir() else make_corpus(work / "feeding", sizes.loader_clips)


def run(sizes: Sizes, work: Path, consumption: dict[str, float]) -> dict:
    """`consumption`: the trainer's useful tokens/s per GPU at "C = 1" and "random C" (from the
    whole-model measurement). Cores per GPU = consumption / production per core."""
    split_dir = corpus(work, sizes)
    result = {}
    for name, scales in (("C = 1", (1.0,)), ("random C", RANDOM_C)):
        made = production_per_core(split_dir, sizes, scales)
        eaten = consumption[name]
        cores = eaten / made["tokens_per_s"]
        result[name] = {
            "loader_per_core": made,
            "trainer_tokens_per_s": eaten,
            "trainer_audio_s_per_s": eaten / made["tokens_per_audio_s"],
            "loader_cores_per_gpu": cores,
            f"loader_cores_per_{GPUS_PER_NODE}_gpu_node": GPUS_PER_NODE * cores,
        }
    result["this_machine_cores"] = os.cpu_count()
    return result
