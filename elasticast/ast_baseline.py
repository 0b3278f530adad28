"""The standard AST, for the paper's comparisons: every sample cropped or zero-padded to
`target_frames`, full attention over its own fixed-size token grid, [cls], mean, or [cls] and
distillation tokens averaged (`cls_dist`, as AST's own code), one 2D position table. Patches
are 16 x 16 at the config's strides: 16/16 (non-overlapping, the paper's baselines) or, e.g.,
10/10 (AudioSet-pretrained AST: a 12 x 101 grid for 1024 frames), cut from the spectrogram the
packed patches hold. Evaluated at another input size (`frames=`), the time axis of that table
is linearly resampled to the new grid, as AST's own code adapts its positions. Same blocks as
ElasticAST; reads the same `PackedBatch`es (each sample's tokens are taken out of the packed
rows), so one loader feeds both models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from elasticast.config import POOLINGS, ModelConfig
from elasticast.model import LAYER_NORM_EPS, Block
from loaders.batch import PATCH_VALUES, PackedBatch


class ASTBaseline(nn.Module):
    def __init__(self, config: ModelConfig, target_frames: int = 1024, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if target_frames % config.patch or target_frames < config.patch:
            raise ValueError(f"target_frames {target_frames} must be a positive multiple of {config.patch}")
        self.config, self.pooling, self.target_frames = config, pooling, target_frames
        self.leading = 2 if pooling == "cls_dist" else 1  # positions before the grid: [cls] (, [dist])
        self.tokens = self.input_tokens(target_frames)
        self.patch_embed = nn.Linear(config.patch * config.patch, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, config.dim)) if pooling == "cls_dist" else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.leading + self.tokens, config.dim)
        )  # leading, then time-major grid
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.mlp_ratio, config.scaled_attention) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.head_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.dim, config.num_classes)
        for table in (self.cls_token, self.dist_token, self.pos_embed):
            if table is not None:
                nn.init.trunc_normal_(table, std=0.02)

    def forward(self, batch: PackedBatch, frames: int | None = None) -> torch.Tensor:
        """Logits `[S, classes]` in the batch's sample order. `frames`: the input size (every
        sample cropped or padded to it); default `target_frames`, the size it was trained at."""
        frames = self.target_frames if frames is None else frames
        self.input_tokens(frames)  # refuses inputs shorter than one patch
        return self.forward_fixed(fixed_size_tokens(batch, frames // self.config.patch * self.config.freq_patches))

    def forward_fixed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits `[S, classes]` from inputs already cropped or padded to one size, `[S, tokens, 256]`
        non-overlapping patches (time-major), as a plain AST loader delivers them: no gathering
        out of packed rows. Patches at other strides are cut from the spectrogram they hold."""
        tokens = self.strided(tokens)
        x = self.patch_embed(tokens) + self.grid_positions(tokens.shape[1])
        leading = [self.cls_token, self.dist_token][: self.leading]
        if self.pooling != "mean":
            lead = torch.cat(leading, dim=1) + self.pos_embed[:, : self.leading]
            x = torch.cat([lead.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, None)  # every row is one whole sample: plain batched attention
        x = self.norm(x)
        pooled = {"cls": lambda: x[:, 0], "mean": lambda: x.mean(dim=1), "cls_dist": lambda: (x[:, 0] + x[:, 1]) / 2}
        return self.head(self.head_norm(pooled[self.pooling]()))

    def strided(self, patches: torch.Tensor) -> torch.Tensor:
        """Non-overlapping time-major patches `[S, T/16 * 8, 256]` → the patches at the config's
        strides, time-major `[S, steps(T) * freq_steps, 256]` (the very same at stride 16)."""
        config = self.config
        if (config.freq_stride, config.time_stride) == (config.patch, config.patch):
            return patches
        size, freqs, patch = patches.shape[0], config.freq_patches, config.patch
        times = patches.shape[1] // freqs
        spec = patches.reshape(size, times, freqs, patch, patch).permute(0, 2, 3, 1, 4)
        spec = spec.reshape(size, 1, freqs * patch, times * patch)  # [S, 1, mel bins, frames]
        columns = F.unfold(spec, patch, stride=(config.freq_stride, config.time_stride))  # frequency-major grid
        steps = (times * patch - patch) // config.time_stride + 1
        grid = columns.transpose(1, 2).reshape(size, config.freq_steps, steps, patch * patch)
        return grid.transpose(1, 2).reshape(size, steps * config.freq_steps, patch * patch)

    def input_tokens(self, frames: int) -> int:
        """Tokens of a `frames`-long input (whole 16-frame patches of it, cut at the strides)."""
        config = self.config
        if frames < config.patch:
            raise ValueError(f"frames {frames} is shorter than one {config.patch}-frame patch")
        whole = frames // config.patch * config.patch
        return ((whole - config.patch) // config.time_stride + 1) * config.freq_steps

    def grid_positions(self, tokens: int) -> torch.Tensor:
        """The `[1, tokens, D]` patch-grid positions (time-major); the trained table when the
        size matches, else its time axis linearly resampled to `tokens // freq_steps` steps."""
        grid = self.pos_embed[:, self.leading :]
        if tokens == self.tokens:
            return grid
        freqs, dim = self.config.freq_steps, self.config.dim
        table = grid.reshape(self.tokens // freqs, freqs * dim).T.unsqueeze(0)  # [1, F*D, T]
        resized = F.interpolate(table, size=tokens // freqs, mode="linear", align_corners=True)
        return resized[0].T.reshape(1, tokens, dim)

    def token_usage(self, batch: PackedBatch) -> tuple[int, int, int]:
        """(real tokens computed, token slots computed, tokens cut) for this batch, as AST sees
        it: each sample cropped or padded to `target_frames` (in 16 x 16 patches of its input)."""
        size = self.target_frames // self.config.patch * self.config.freq_patches
        return fixed_size_usage(batch.n_tokens, size, batch.cut_tokens)


def fixed_size_usage(tokens: Sequence[int] | torch.Tensor, size: int, upstream_cut: int = 0) -> tuple[int, int, int]:
    """(real tokens kept, token slots, tokens cut) when samples of `tokens` tokens are each
    cropped or padded to `size`; `upstream_cut`: tokens the loader had already cut."""
    tokens = torch.as_tensor(tokens)
    real = int(tokens.clamp(max=size).sum())
    return real, len(tokens) * size, int((tokens - size).clamp(min=0).sum()) + int(upstream_cut)


def fixed_size_tokens(batch: PackedBatch, tokens: int) -> torch.Tensor:
    """Each sample's tokens `[S, tokens, 256]`: its first `tokens` (tokens are time-major, so
    that is a crop in time), zero-padded at the end when shorter, as AST's loaders do."""
    out = batch.patches.new_zeros(batch.num_samples, tokens, PATCH_VALUES)
    for i, (row, slot) in enumerate(zip(batch.row.tolist(), batch.slot.tolist())):
        own = batch.patches[row][batch.segment_ids[row] == slot][:tokens]
        out[i, : own.shape[0]] = own
    return out
