"""`PackedBatch`: fixed-shape packed rows plus per-sample metadata, what every trainer consumes.

Shapes never change within a stream (`rows_per_batch` x `max_tokens`), so compiled models do
not recompile. Samples are listed in one global order: row by row, by position in the row;
sample i of row r has segment id = its slot (1-based) in that row; 0 is padding.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

PATCH_VALUES = 256


@dataclass(frozen=True)
class PackedBatch:
    patches: torch.Tensor  # [R, L, 256] float32
    segment_ids: torch.Tensor  # [R, L] int32, 0 = padding, 1..k = slot in the row
    freq_pos: torch.Tensor  # [R, L] int64
    time_pos: torch.Tensor  # [R, L] int64
    labels: torch.Tensor  # [S] class ids (int64) or [S, classes] multi-hot (float32)
    row: torch.Tensor  # [S] int64
    slot: torch.Tensor  # [S] int64, the sample's segment id in its row
    n_tokens: torch.Tensor  # [S] int64
    scale: torch.Tensor  # [S] float32
    keys: list[str] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    is_padding: bool = False  # all-padding filler so every rank runs the same steps
    failed: list[dict] = field(default_factory=list)  # samples left as padding: key, shard, reason
    cut_tokens: int = 0

    @property
    def num_samples(self) -> int:
        return len(self.keys)

    @property
    def real_tokens(self) -> int:
        return int((self.segment_ids > 0).sum())

    @property
    def pad_ratio(self) -> float:
        return 1.0 - self.real_tokens / self.segment_ids.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedBatch:
        """Page-locked copies for fast host-to-GPU transfer; unchanged where no GPU exists."""
        return self._map(lambda t: t.pin_memory()) if torch.cuda.is_available() else self

    def attention_mask(self) -> torch.Tensor:
        """Dense `[R, L, L]` boolean mask (True = may attend): same segment, not padding.
        The readable reference; real kernels use `segment_ids` or `cu_seqlens` instead."""
        ids = self.segment_ids
        return (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & (ids > 0).unsqueeze(-1)

    def cu_seqlens(self) -> tuple[torch.Tensor, int]:
        """Boundaries of every segment in the flattened `[R * L]` tokens, for varlen kernels,
        and the longest segment. Each row's tail padding is a segment of its own, so every
        token belongs to exactly one sequence and padding never reaches a sample."""
        ids = self.segment_ids.reshape(-1)
        row_start = torch.zeros_like(ids, dtype=torch.bool)
        row_start[:: self.segment_ids.shape[1]] = True
        starts = torch.nonzero(row_start | torch.cat([ids.new_ones(1, dtype=torch.bool), ids[1:] != ids[:-1]])).flatten()
        bounds = torch.cat([starts, torch.tensor([ids.numel()])]).to(torch.int32)
        return bounds, int((bounds[1:] - bounds[:-1]).max())

    def _map(self, fn) -> PackedBatch:
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})
