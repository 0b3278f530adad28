"""What the sections of `bench/gpu.py` share: the run's sizes, device timing, peak memory, FLOPs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from elasticast import preset
from elasticast.config import ModelConfig

# bf16 dense tensor-core peaks (no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
}


@dataclass(frozen=True)
class Sizes:
    """Shapes and counts of one run: the real one (base model, 2048-token rows) or the CPU smoke run."""

    preset: dict  # preset name and overrides for `elasticast.preset`
    rows: int  # packed rows per step
    length: int  # tokens per row
    ast_frames: int  # the AST baseline's fixed input
    steps: int  # timed steps per measurement
    warmup: int  # untimed steps first (compilation, allocator)
    layouts: int  # different batch layouts in the recompilation check
    loader_clips: int  # clips of the corpus the loader is timed on
    e2e_clips: int  # clips of the shard set the end-to-end run trains on
    e2e_epochs: int

    @property
    def ast_samples(self) -> int:
        """AST samples per step: the same patch tokens as a packed step."""
        return self.rows * self.length // (self.ast_frames // 2)

    def model_config(self, num_classes: int = 10, **overrides) -> ModelConfig:
        name, extra = self.preset["name"], {k: v for k, v in self.preset.items() if k != "name"}
        return preset(name, num_classes, max_frames=3072, **extra, **overrides)


FULL = Sizes(
    {"name": "base"},
    rows=8,
    length=2048,
    ast_frames=1024,
    steps=10,
    warmup=3,
    layouts=50,
    loader_clips=160,
    e2e_clips=1200,
    e2e_epochs=3,
)
SMOKE = Sizes(
    {"name": "tiny", "dim": 64, "depth": 2, "heads": 4},
    rows=2,
    length=256,
    ast_frames=128,
    steps=2,
    warmup=1,
    layouts=3,
    loader_clips=6,
    e2e_clips=12,
    e2e_epochs=1,
)


def skipped(reason: str) -> dict:
    return {"skipped": reason}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[int], None], count: int, warmup: int, device: torch.device) -> float:
    """Mean seconds of `count` calls after `warmup` untimed ones; step(i) gets the call's index."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    started = time.perf_counter()
    for i in range(warmup, warmup + count):
        step(i)
    synchronize(device)
    return (time.perf_counter() - started) / count


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(bf16 peak TFLOP/s, the device's name); None when the device is not in the table."""
    if device.type != "cuda":
        return override, "CPU"
    name = torch.cuda.get_device_name(device)
    if override:
        return override, name
    match = next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)
    return match, name


def layer_flops(config: ModelConfig, tokens: int, pairs: int) -> float:
    """Forward FLOPs of one transformer block over `tokens` tokens whose attention covers `pairs`
    (query, key) pairs (summed over rows): 2 x (4 D^2 + 2 x mlp_ratio x D^2) per token for the linear
    layers, 4 D per pair for QK^T and AV. Norms, softmax and GELU are left out."""
    dim = config.dim
    return 2 * tokens * (4 * dim * dim + 2 * config.mlp_ratio * dim * dim) + 4 * dim * pairs


def training_flops(config: ModelConfig, tokens: int, pairs: int) -> float:
    """FLOPs of a forward+backward (3x the forward) of the whole encoder plus the patch projection
    (2 x 256 x D per token); the pooling head is left out (< 1 %)."""
    return 3.0 * (config.depth * layer_flops(config, tokens, pairs) + 2 * tokens * 256 * config.dim)
