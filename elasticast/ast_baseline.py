"""The standard AST, for the paper's comparisons: every sample cropped or zero-padded to
`target_frames`, full attention over its own fixed-size token grid, [cls] or mean pooling,
one 2D position table. Same blocks as ElasticAST; reads the same `PackedBatch`es (each
sample's tokens are taken out of the packed rows), so one loader feeds both models.
"""
from __future__ import annotations

import torch
from torch import nn

from elasticast.attention import build_layout
from elasticast.config import ModelConfig
from elasticast.model import LAYER_NORM_EPS, Block
from loaders.batch import PATCH_VALUES, PackedBatch

POOLINGS = ("cls", "mean")


class ASTBaseline(nn.Module):
    def __init__(self, config: ModelConfig, target_frames: int = 1024, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if target_frames % config.patch or target_frames < config.patch:
            raise ValueError(f"target_frames {target_frames} must be a positive multiple of {config.patch}")
        self.config, self.pooling = config, pooling
        self.tokens = target_frames // config.patch * config.freq_patches
        self.patch_embed = nn.Linear(config.patch * config.patch, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.tokens, config.dim))  # cls, then time-major grid
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.head_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.dim, config.num_classes)
        for table in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(table, std=0.02)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Logits `[S, classes]` in the batch's sample order."""
        tokens = fixed_size_tokens(batch, self.tokens)
        x = self.patch_embed(tokens)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        else:
            x = x + self.pos_embed[:, 1:]
        layout = build_layout(torch.ones(x.shape[:2], dtype=torch.int32, device=x.device), "split")
        for block in self.blocks:
            x = block(x, layout)
        x = self.norm(x)
        pooled = x[:, 0] if self.pooling == "cls" else x.mean(dim=1)
        return self.head(self.head_norm(pooled))


def fixed_size_tokens(batch: PackedBatch, tokens: int) -> torch.Tensor:
    """Each sample's tokens `[S, tokens, 256]`: its first `tokens` (tokens are time-major, so
    that is a crop in time), zero-padded at the end when shorter, as AST's loaders do."""
    out = batch.patches.new_zeros(batch.num_samples, tokens, PATCH_VALUES)
    for i, (row, slot) in enumerate(zip(batch.row.tolist(), batch.slot.tolist())):
        own = batch.patches[row][batch.segment_ids[row] == slot][:tokens]
        out[i, : own.shape[0]] = own
    return out
