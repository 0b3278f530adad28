"""Attention backends and the whole model at work: one transformer block and the whole model,
forward+backward in bf16 autocast, on packed rows of VoxCeleb-like lengths, against the AST
baseline at a fixed input size on the same device; and the host-to-device copy of a batch."""

from __future__ import annotations

import time

import model as model_bench  # bench/model.py: the sample pools both benchmarks draw from
import numpy as np
import torch

from elasticast import ElasticAST, loss
from elasticast.ast_baseline import ASTBaseline, fixed_size_tokens
from elasticast.attention import build_layout, run_ids
from elasticast.model import Block
from loaders.batch import PackedBatch

from gpu_parts.common import Sizes, layer_flops, peak_gib, reset_peak, timed_steps, training_flops

RANDOM_C = tuple(np.round(np.arange(1.0, 4.01, 0.2), 1))


def attention_pairs(segment_ids: torch.Tensor) -> int:
    """(query, key) pairs attended within runs (samples and padding stretches), summed over rows."""
    runs = run_ids(segment_ids.cpu())
    return sum(int((torch.bincount(row).double() ** 2).sum()) for row in runs)


def packed_batches(sizes: Sizes, count: int, scales: tuple[float, ...] = (1.0,), seed: int = 0) -> list[PackedBatch]:
    generator = torch.Generator().manual_seed(seed)
    return model_bench.elastic_steps(count, generator, sizes.rows, sizes.length, scales, seed)[0]


def summary(
    seconds: float, tokens: float, useful: float, flops: float, device: torch.device, peak: float | None
) -> dict:
    out = {
        "step_ms": 1e3 * seconds,
        "tokens_per_s": tokens / seconds,
        "useful_tokens_per_s": useful / seconds,
        "peak_gib": peak_gib(device),
        "tflops": flops / seconds / 1e12,
    }
    out["mfu"] = out["tflops"] / peak if peak else None
    return out


def block(sizes: Sizes, backend: str, device: torch.device, peak: float | None) -> dict:
    """One block of the preset, forward+backward; the layout is built outside the timed region (the
    model builds it once per batch for all its layers)."""
    config = sizes.model_config()
    torch.manual_seed(0)
    layer = Block(config.dim, config.heads, config.mlp_ratio).to(device)
    batches = packed_batches(sizes, sizes.steps + sizes.warmup)
    layouts = [build_layout(b.segment_ids.to(device), backend) for b in batches]
    x = torch.randn(sizes.rows, sizes.length, config.dim, device=device, requires_grad=True)

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = layer(x, layouts[i])
        out.float().square().mean().backward()

    reset_peak(device)
    seconds = timed_steps(step, sizes.steps, sizes.warmup, device)
    timed = batches[sizes.warmup :]
    tokens, useful = sizes.rows * sizes.length, np.mean([b.real_tokens for b in timed])
    flops = 3.0 * np.mean([layer_flops(config, tokens, attention_pairs(b.segment_ids)) for b in timed])
    return summary(seconds, tokens, useful, flops, device, peak)


def whole_model(
    sizes: Sizes, backend: str, device: torch.device, peak: float | None, scales: tuple[float, ...] = (1.0,)
) -> dict:
    """A training step of the whole model: forward, loss, backward, AdamW; batches already on the device."""
    config = sizes.model_config()
    torch.manual_seed(0)
    net = ElasticAST(config).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    batches = packed_batches(sizes, sizes.steps + sizes.warmup, scales)
    on_device = [b.to(device) for b in batches]
    first = {}

    def step(i: int) -> None:
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            value = loss(net(on_device[i], attention=backend).float(), on_device[i].labels)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i == 0:
            first["seconds"] = time.perf_counter() - started

    reset_peak(device)
    seconds = timed_steps(step, sizes.steps, sizes.warmup, device)
    timed = batches[sizes.warmup :]
    tokens, useful = sizes.rows * sizes.length, float(np.mean([b.real_tokens for b in timed]))
    flops = float(np.mean([training_flops(config, tokens, attention_pairs(b.segment_ids)) for b in timed]))
    return summary(seconds, tokens, useful, flops, device, peak) | {"first_step_s": first["seconds"]}


def ast_model(sizes: Sizes, device: torch.device, peak: float | None) -> dict:
    """The AST baseline's training step on inputs already cropped/padded to `ast_frames` ([cls] pooling)."""
    config = sizes.model_config()
    torch.manual_seed(0)
    net = ASTBaseline(config, target_frames=sizes.ast_frames).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batches = model_bench.ast_steps(sizes.steps + sizes.warmup, generator, sizes.ast_samples, sizes.ast_frames)[0]
    inputs = [(fixed_size_tokens(b, net.tokens).to(device), b.labels.to(device)) for b in batches]

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            value = loss(net.forward_fixed(inputs[i][0]).float(), inputs[i][1])
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds = timed_steps(step, sizes.steps, sizes.warmup, device)
    grid = net.tokens + 1
    tokens = sizes.ast_samples * grid
    useful = float(np.mean([b.real_tokens for b in batches[sizes.warmup :]]))
    return summary(
        seconds, tokens, useful, training_flops(config, tokens, sizes.ast_samples * grid * grid), device, peak
    )


def transfer(sizes: Sizes, device: torch.device, repeats: int = 20) -> dict:
    """Milliseconds to copy one packed batch to the device: from pageable memory, and from pinned
    memory with `non_blocking=True` (the pinning itself timed apart: a loader thread can do it)."""
    batch = packed_batches(sizes, 1)[0]
    size_mb = (
        sum(t.numel() * t.element_size() for t in (batch.patches, batch.segment_ids, batch.freq_pos, batch.time_pos))
        / 1e6
    )

    def mean_ms(fn) -> float:
        fn()
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize(device)
        return 1e3 * (time.perf_counter() - started) / repeats

    pinned = batch.pin_memory()
    result = {
        "batch_mb": size_mb,
        "pageable_ms": mean_ms(lambda: batch.to(device)),
        "pin_ms": mean_ms(lambda: batch.pin_memory()),
        "pinned_ms": mean_ms(lambda: pinned.to(device, non_blocking=True)),
    }
    result["pinned_gb_per_s"] = size_mb / result["pinned_ms"]
    return result


def run(sizes: Sizes, device: torch.device, peak: float | None) -> dict:
    backends = ["dense", "flex", "varlen"] if device.type == "cuda" else ["split"]  # CPU (smoke): the CPU default only
    results = {
        "block": {b: block(sizes, b, device, peak) for b in backends},
        "model": {b: whole_model(sizes, b, device, peak) for b in backends},
    }
    results["model"]["ast"] = ast_model(sizes, device, peak)
    default = "flex" if device.type == "cuda" else "split"
    results["model_random_c"] = {default: whole_model(sizes, default, device, peak, RANDOM_C)}
    results["transfer"] = (
        transfer(sizes, device) if device.type == "cuda" else {"skipped": "no CUDA device: nothing to pin"}
    )
    return results
