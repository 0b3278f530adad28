"""Correctness of each attention backend on the device: agreement with `dense` (forward and
backward), packing invariance, exactly zero gradient across samples, and an all-padding filler
batch under DistributedDataParallel. Every batch has one shape, so compiled flex compiles once
per dtype."""

from __future__ import annotations

import random
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from elasticast import ElasticAST, loss, preset
from loaders.batch import PackedBatch, from_features

ROWS, LENGTH, SAMPLES = 3, 384, 9
# (max |logits - reference|, max |grad - reference| / max |reference grad|) allowed per dtype
TOLERANCE = {torch.float32: (2e-4, 1e-3), torch.bfloat16: (3e-2, 5e-2)}


def small_model(device: torch.device) -> ElasticAST:
    torch.manual_seed(0)
    return ElasticAST(preset("tiny", num_classes=5, dim=64, depth=2, heads=4, max_frames=1024)).to(device)


def random_features(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    sizes = [8 * int(k) for k in torch.randint(1, 12, (SAMPLES,), generator=generator)]
    return [
        (
            torch.randn(n, 256, generator=generator),
            torch.arange(8).repeat(n // 8),
            torch.arange(n // 8).repeat_interleave(8),
        )
        for n in sizes
    ]


def packed(
    features: list, rows: list[list[int]], pad_value: float = 0.0, hole_before: int | None = None
) -> PackedBatch:
    """The samples `rows[r]` (indices into `features`) placed in row r in order, a 16-token gap
    before sample `hole_before`, padding filled with `pad_value`; always `ROWS x LENGTH`."""
    members, row_of, offset = [], [], []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            start += 16 if i == hole_before else 0
            members.append(i)
            row_of.append(r)
            offset.append(start)
            start += features[i][0].shape[0]
    batch = from_features(
        [features[i] for i in members],
        np.array(row_of),
        np.array(offset),
        np.ones(len(members)),
        [str(i) for i in members],
        torch.tensor([i % 5 for i in members]),
        LENGTH,
    )
    batch = with_rows(batch, ROWS)
    batch.patches[batch.segment_ids == 0] = pad_value
    return batch


def with_rows(batch: PackedBatch, rows: int) -> PackedBatch:
    """`batch` with all-padding rows appended up to `rows` (`from_features` stops at the last used row)."""
    extra = rows - batch.patches.shape[0]
    grown = {
        name: torch.cat(
            [getattr(batch, name), getattr(batch, name).new_zeros(extra, LENGTH, *getattr(batch, name).shape[2:])]
        )
        for name in ("patches", "segment_ids", "freq_pos", "time_pos")
    }
    return replace(batch, **grown)


def filler() -> PackedBatch:
    """An all-padding batch, as the loader sends to a rank with no work left in the epoch."""
    zeros, empty = torch.zeros(ROWS, LENGTH, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return PackedBatch(
        torch.zeros(ROWS, LENGTH, 256),
        zeros.int(),
        zeros,
        zeros,
        empty,
        empty,
        empty,
        empty,
        torch.zeros(0),
        is_padding=True,
    )


def forward(model, batch: PackedBatch, backend: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return model(batch.to(device), attention=backend).float()


def outputs_and_gradients(backend: str, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, dict]:
    model = small_model(device).train()
    batch = packed(random_features(3), [[0, 1, 2], [3, 4, 5, 6], [7, 8]], hole_before=4)
    out = forward(model, batch, backend, dtype, device)
    loss(out, batch.labels.to(device)).backward()
    return out.detach().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters()}


def agreement(backend: str, reference: str, dtype: torch.dtype, device: torch.device) -> dict:
    (out, grads), (ref_out, ref_grads) = (outputs_and_gradients(b, dtype, device) for b in (backend, reference))
    logits_error = float((out - ref_out).abs().max())
    grad_error = max(float((grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)) for n, g in ref_grads.items())
    logits_tol, grad_tol = TOLERANCE[dtype]
    return {
        "logits_max_abs": logits_error,
        "grad_max_rel": grad_error,
        "tolerance": [logits_tol, grad_tol],
        "ok": logits_error <= logits_tol and grad_error <= grad_tol,
    }


def packing_invariance(backend: str, dtype: torch.dtype, device: torch.device) -> dict:
    """Each sample alone in a batch vs packed with others in 3 orders, a hole, padding of any value.
    Forward with gradients on (a training step's forward), so compiled flex reuses its graph."""
    model, features = small_model(device).train(), random_features(1)
    alone = {
        str(i): forward(model, packed(features, [[i]]), backend, dtype, device)[0].detach() for i in range(SAMPLES)
    }
    order, worst = list(range(SAMPLES)), 0.0
    for seed in range(3):
        random.Random(seed).shuffle(order)
        batch = packed(
            features, [order[0:4], order[4:6], order[6:]], pad_value=float(seed * 7 - 3), hole_before=order[5]
        )
        for key, value in zip(batch.keys, forward(model, batch, backend, dtype, device).detach()):
            worst = max(worst, float((value - alone[key]).abs().max()))
    return {"logits_max_abs": worst, "tolerance": TOLERANCE[dtype][0], "ok": worst <= TOLERANCE[dtype][0]}


def cross_sample_gradient(backend: str, dtype: torch.dtype, device: torch.device) -> dict:
    """The gradient of one sample's logits w.r.t. every other sample's and the padding's patches: exactly 0."""
    model, features = small_model(device).train(), random_features(2)
    batch = packed(features, [[0, 1, 2], [3, 4]]).to(device)
    patches = batch.patches.clone().requires_grad_(True)
    logits = forward(model, replace(batch, patches=patches), backend, dtype, device)
    logits[batch.keys.index("1")].sum().backward()
    own = (batch.segment_ids == 2) & (torch.arange(ROWS, device=device)[:, None] == 0)
    leaked = float(patches.grad[~own].abs().max())
    return {"leaked_max_abs": leaked, "own_grad_sum": float(patches.grad[own].abs().sum()), "ok": leaked == 0.0}


def filler_under_ddp(backend: str, dtype: torch.dtype, device: torch.device) -> dict:
    """Real, filler, real, filler steps through DDP (world of 1: nccl on CUDA, gloo on CPU, no
    unused-parameter search). DDP raises on the step after one where a parameter got no gradient;
    the filler's loss must be 0 and every gradient present and zero."""
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"file://{Path(folder) / 'store'}",
            rank=0,
            world_size=1,
        )
        try:
            model = small_model(device).train()
            ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
            optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
            real = packed(random_features(4), [[0, 1], [2, 3, 4], [5]])
            filler_losses, zero_grads = [], True
            for batch in (real, filler(), real, filler()):
                value = loss(forward(ddp, batch, backend, dtype, device), batch.labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                if batch.is_padding:
                    filler_losses.append(value.item())
                    zero_grads &= all(p.grad is not None and not p.grad.any() for p in model.parameters())
                optimizer.step()
        finally:
            dist.destroy_process_group()
    return {
        "filler_losses": filler_losses,
        "all_grads_present_and_zero": zero_grads,
        "ok": zero_grads and all(v == 0 for v in filler_losses),
    }


def run(device: torch.device) -> dict:
    """Every check for the device's backends: flex (compiled) in fp32 and bf16 and varlen (bf16
    only) on CUDA; split on CPU (flex has no CPU backward and is compiled only on CUDA)."""
    if device.type == "cuda":
        cases = [
            ("flex", torch.float32),
            ("flex", torch.bfloat16),
            ("varlen", torch.bfloat16),
            ("dense", torch.bfloat16),
        ]
    else:
        cases = [("split", torch.float32)]
    results = {}
    for backend, dtype in cases:
        name = f"{backend} {str(dtype).removeprefix('torch.')}"
        checks = {"vs dense": agreement(backend, "dense", dtype, device)} if backend != "dense" else {}
        checks |= {
            "packing invariance": packing_invariance(backend, dtype, device),
            "cross-sample gradient": cross_sample_gradient(backend, dtype, device),
        }
        results[name] = checks
    backend, dtype = cases[0]
    results["filler batch"] = {
        f"DDP ({backend} {str(dtype).removeprefix('torch.')})": filler_under_ddp(backend, dtype, device)
    }
    return results
