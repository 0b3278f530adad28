"""ElasticAST: a ViT encoder over packed rows of spectrogram patches, one logit vector per sample.

Patches `[R, L, 256]` → Linear → + frequency table[f] + time table[t] (factorised positions) →
pre-LN blocks attending within each sample (`elasticast.attention`) → masked attention pooling:
one learned query, per sample a softmax over that sample's tokens only → LayerNorm → Linear.
Output rows follow the batch's sample order (`batch.row`, `batch.slot`). Never imports Ray.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from elasticast.attention import Attention, RunLayout, build_layout, default_backend, run_ids
from elasticast.config import ModelConfig
from loaders.batch import PackedBatch

LAYER_NORM_EPS = 1e-6


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block as in timm's ViT."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, scaled: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads, scaled)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # names as in timm, so ViT weights load by name

    def forward(self, x: torch.Tensor, layout: RunLayout | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), layout)
        return x + self.mlp(self.norm2(x))


class MaskedAttentionPool(nn.Module):
    """One learned query; each sample's heads attend only over that sample's tokens.

    The query is shared, so a token's score does not depend on the sample it is pooled into:
    scores are computed once for all tokens, then soft-maxed within each sample.
    """

    def __init__(self, dim: int, heads: int, scaled: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5 if scaled else 1.0
        self.query = nn.Parameter(torch.zeros(dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        rows, length, dim = x.shape
        k, v = self.kv(x).reshape(rows * length, 2, self.heads, dim // self.heads).unbind(dim=1)
        q = self.query.reshape(self.heads, dim // self.heads)
        scores = torch.einsum("thd,hd->ht", k, q) * self.scale  # [H, R*L]
        owner = (batch.row.unsqueeze(1) == torch.arange(rows, device=x.device).repeat_interleave(length)) & (
            batch.slot.unsqueeze(1) == batch.segment_ids.reshape(-1)
        )  # [S, R*L]: token t belongs to sample s
        weights = scores.unsqueeze(0).masked_fill(~owner.unsqueeze(1), float("-inf")).softmax(dim=-1)  # [S, H, R*L]
        pooled = torch.einsum("sht,thd->shd", weights, v).reshape(-1, dim)
        return self.proj(pooled)


class ElasticAST(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if (config.freq_stride, config.time_stride) != (config.patch, config.patch):
            raise ValueError(
                f"ElasticAST packs non-overlapping patches: strides must be {config.patch}, not "
                f"{config.freq_stride}/{config.time_stride} (overlapping strides are the AST baseline's)"
            )
        self.config = config
        patch_values = config.patch * config.patch
        self.patch_embed = nn.Linear(patch_values, config.dim)
        self.freq_embed = nn.Parameter(torch.zeros(config.freq_patches, config.dim))
        self.time_embed = nn.Parameter(torch.zeros(config.time_patches, config.dim))
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.mlp_ratio, config.scaled_attention) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.pool = MaskedAttentionPool(config.dim, config.heads, config.scaled_attention)
        self.head_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.dim, config.num_classes)
        for table in (self.freq_embed, self.time_embed):
            nn.init.trunc_normal_(table, std=0.02)

    def forward(self, batch: PackedBatch, attention: str | None = None) -> torch.Tensor:
        """Logits `[S, classes]`, one row per sample of the batch, in its sample order."""
        backend = attention or self.config.attention
        layout = build_layout(
            batch.segment_ids, default_backend(batch.patches.device) if backend == "auto" else backend
        )
        x = self.patch_embed(batch.patches) + F.embedding(batch.freq_pos, self.freq_embed) + self.time_embedding(batch)
        for block in self.blocks:
            x = block(x, layout)
        return self.head(self.head_norm(self.pool(self.norm(x), batch)))

    @staticmethod
    def token_usage(batch: PackedBatch) -> tuple[int, int, int]:
        """(real tokens computed, token slots computed, tokens cut upstream) for this batch."""
        return batch.real_tokens, batch.segment_ids.numel(), batch.cut_tokens

    def time_embedding(self, batch: PackedBatch) -> torch.Tensor:
        """Time positions to embeddings. A sample longer than the table is refused, or with
        `beyond_table="interpolate"` reads the table stretched to its own length (linear), so
        what a sample sees never depends on what it is packed with."""
        rows = self.config.time_patches
        longest = int(batch.time_pos.max()) + 1
        if longest <= rows:
            return F.embedding(batch.time_pos, self.time_embed)
        if self.config.beyond_table == "error":
            raise ValueError(
                f"time position {longest - 1} is beyond the table ({rows} patches = max_frames "
                f"{self.config.max_frames}): crop inputs to max_frames upstream, or set beyond_table='interpolate'"
            )
        run = (
            run_ids(batch.segment_ids)
            + torch.arange(len(batch.time_pos), device=batch.time_pos.device)[:, None] * batch.time_pos.shape[1]
        )
        span = torch.zeros(run.numel(), dtype=batch.time_pos.dtype, device=run.device)
        span = span.scatter_reduce(0, run.flatten(), batch.time_pos.flatten(), "amax")[run] + 1
        where = torch.where(span > rows, batch.time_pos * (rows - 1) / (span - 1).clamp(min=1), batch.time_pos.float())
        low = where.floor().long().clamp(max=rows - 1)
        frac = (where - low).unsqueeze(-1)
        high = (low + 1).clamp(max=rows - 1)
        return F.embedding(low, self.time_embed) * (1 - frac) + F.embedding(high, self.time_embed) * frac


def loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-sample loss: cross-entropy for class ids, BCE for multi-hot labels. `targets`
    (mixup's soft targets, `PackedBatch.targets`) replace the labels: soft cross-entropy when the
    labels are class ids, BCE when they are multi-hot.
    An all-padding batch (no samples) gives a zero that still backpropagates (no DDP hang)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if labels.dtype.is_floating_point:
        return F.binary_cross_entropy_with_logits(logits, labels if targets is None else targets)
    return F.cross_entropy(logits, labels if targets is None else targets)
