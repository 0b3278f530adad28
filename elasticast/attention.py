"""Packed self-attention: tokens attend only inside their own run of equal segment ids.

A run is a maximal stretch of one segment id in a row: a sample, or a stretch of padding (the
row's tail, or a hole a failed sample left). Padding thus only ever sees padding, and every
backend computes the very same function:

- `split` (CPU default): scaled-dot-product attention on each run separately (fastest on CPU);
- `dense`: SDPA with the boolean block-diagonal mask (the readable reference);
- `flex` (CUDA default): FlexAttention with a block mask built once per batch;
- `varlen` (CUDA only): the Flash varlen kernel over the flattened rows, each run one sequence.
  It is a half-precision kernel: run it under bf16/fp16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from elasticast.config import ATTENTION_BACKENDS


@dataclass
class RunLayout:
    """Per-batch attention layout, built once and shared by every layer."""

    runs: torch.Tensor  # [R, L] run id per token
    bounds: list[list[int]]  # per row: run boundaries 0 = b0 < b1 < ... = L
    mask: torch.Tensor | None = None  # dense: [R, 1, L, L]
    block_mask: object | None = None  # flex
    cu_seqlens: torch.Tensor | None = None  # varlen: run starts in the flattened [R * L] tokens, then R * L
    longest: int = 0  # varlen: the longest run


def run_ids(segment_ids: torch.Tensor) -> torch.Tensor:
    """Number the runs of each row 0, 1, 2, ... (a new run wherever the segment id changes)."""
    change = torch.ones_like(segment_ids, dtype=torch.bool)
    change[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return change.long().cumsum(dim=1) - 1


def run_bounds(runs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Boundaries of every run in the flattened `[R * L]` tokens (int32, as varlen kernels want)
    and the longest run. A row's start always opens a new run, so runs never span rows."""
    flat = (runs + torch.arange(runs.shape[0], device=runs.device).unsqueeze(1) * runs.shape[1]).reshape(-1)
    starts = torch.nonzero(torch.diff(flat, prepend=flat.new_tensor([-1]))).flatten()
    bounds = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    return bounds, int(bounds.diff().max())


def build_layout(segment_ids: torch.Tensor, backend: str) -> RunLayout:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {ATTENTION_BACKENDS}")
    runs = run_ids(segment_ids)
    length = segment_ids.shape[1]
    layout = RunLayout(runs, [])
    if backend == "split":
        for row in runs.cpu():
            starts = torch.nonzero(torch.diff(row, prepend=row.new_tensor([-1]))).flatten().tolist()
            layout.bounds.append(starts + [length])
    elif backend == "dense":
        layout.mask = (runs.unsqueeze(-1) == runs.unsqueeze(-2)).unsqueeze(1)
    elif backend == "varlen":
        if not segment_ids.is_cuda:
            raise ValueError("attention backend 'varlen' needs a CUDA device; use 'split' or 'dense' on CPU")
        layout.cu_seqlens, layout.longest = run_bounds(runs)
    else:
        from torch.nn.attention.flex_attention import create_block_mask

        def same_run(b, h, q, kv):
            return runs[b, q] == runs[b, kv]

        layout.block_mask = create_block_mask(same_run, runs.shape[0], None, length, length, device=runs.device)
    return layout


@lru_cache(maxsize=2)
def _flex_attention(compiled: bool):
    """FlexAttention, compiled on CUDA (eager is a slow reference path there); eager on CPU,
    where it runs forward only. Fixed batch shapes keep the compiled kernel from recompiling."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: RunLayout, scale: float | None) -> torch.Tensor:
    """`[R, H, L, d]` in and out; the kernel sees `R * L` tokens cut into runs."""
    from torch.nn.attention.varlen import varlen_attn

    rows, heads, length, head_dim = q.shape
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else q.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attention backend 'varlen' runs in fp16/bf16 only (got {dtype}); use autocast or 'flex'")
    flat = [t.transpose(1, 2).reshape(rows * length, heads, head_dim).to(dtype) for t in (q, k, v)]
    out = varlen_attn(*flat, layout.cu_seqlens, layout.cu_seqlens, layout.longest, layout.longest, scale=scale)
    return out.reshape(rows, length, heads, head_dim).transpose(1, 2)


def default_backend(device: torch.device) -> str:
    return "flex" if device.type == "cuda" else "split"


class Attention(nn.Module):
    """Multi-head self-attention (qkv bias, 1/sqrt(d) scaling) restricted to runs; with no
    layout, each row is one sequence (fixed-size inputs, as AST's) and all rows go to SDPA at once.
    `scaled=False`: logits not divided by sqrt(d), as the paper's released weights were trained."""

    def __init__(self, dim: int, heads: int, scaled: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = None if scaled else 1.0  # None: SDPA's own 1/sqrt(d)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, layout: RunLayout | None) -> torch.Tensor:
        rows, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(rows, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if layout is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif layout.mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, scale=self.scale)
        elif layout.block_mask is not None:
            out = _flex_attention(q.is_cuda)(q, k, v, block_mask=layout.block_mask, scale=self.scale)
        elif layout.cu_seqlens is not None:
            out = _varlen(q, k, v, layout, self.scale)
        else:
            out = torch.cat(
                [
                    torch.cat(
                        [
                            F.scaled_dot_product_attention(q[r, :, a:b], k[r, :, a:b], v[r, :, a:b], scale=self.scale)
                            for a, b in zip(bounds[:-1], bounds[1:])
                        ],
                        dim=1,
                    ).unsqueeze(0)
                    for r, bounds in enumerate(layout.bounds)
                ]
            )
        return self.proj(out.transpose(1, 2).reshape(rows, length, dim))
