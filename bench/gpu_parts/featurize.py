"""Featurizing on the GPU (issue 27): `DeviceFeaturizer` on packed batches of the loader's
waveforms, already on the device, in seconds of audio per second at C = 1 and random C; its
share of a whole-model training step of the same shape (the speed section's); and its agreement
with the CPU path (the same plan featurized by the loader)."""

from __future__ import annotations

from pathlib import Path

import torch

from loaders import PackedStream
from loaders.device_features import LAYOUT, to_device

from gpu_parts.common import Sizes, timed_steps
from gpu_parts.feeding import corpus
from gpu_parts.speed import RANDOM_C

TOLERANCE = 1e-4  # max abs difference of patches, float32


def run(sizes: Sizes, device: torch.device, work: Path, step_ms: dict[str, float] | None) -> dict:
    """`step_ms`: the whole-model step at "C = 1" and "random C" (speed section), None if not run."""
    split_dir = corpus(work, sizes)
    result = {}
    for name, scales in (("C = 1", (1.0,)), ("random C", RANDOM_C)):
        settings = dict(rows_per_batch=sizes.rows, max_tokens=sizes.length, scales=scales, backend="local")
        waves = PackedStream(split_dir, **settings, featurize="device")
        patches = list(PackedStream(split_dir, **settings).epoch(0))
        shipped = [b for b in waves.epoch(0) if not b.is_padding]
        on_device = [b.to(device) for b in shipped]
        featurizer = waves.featurizer.to(device)
        seconds = timed_steps(
            lambda i: featurizer.featurize(on_device[i % len(on_device)]), sizes.steps, sizes.warmup, device
        )
        length = LAYOUT.index("length")
        audio_s = (
            sum(int(b.audio.layout[:, length].sum()) for b in shipped) / len(shipped) / waves.features.spec.sample_rate
        )
        worst = max(
            float((to_device(b, device, featurizer).patches.cpu() - p.patches).abs().max())
            for b, p in zip(waves.epoch(0), patches)
        )
        result[name] = {
            "featurize_ms": 1e3 * seconds,
            "audio_s_per_batch": audio_s,
            "audio_s_per_s": audio_s / seconds,
            "share_of_step": seconds * 1e3 / step_ms[name] if step_ms else None,
            "max_abs_vs_cpu": worst,
            "ok": worst <= TOLERANCE,
        }
    return result
