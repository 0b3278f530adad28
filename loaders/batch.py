"""`PackedBatch`: fixed-shape packed rows plus per-sample metadata, what every trainer consumes.

Shapes never change within a stream (`rows_per_batch` x `max_tokens`), so compiled models do
not recompile. Samples are listed in one global order: row by row, by position in the row;
sample i of row r has segment id = its slot (1-based) in that row; 0 is padding.

A stream that featurizes on the trainer's device (`StreamConfig.featurize="device"`) ships
`audio` (`Waveforms`: the samples' int16 waveforms, their layout and the recipe's keyed draws)
and `patches` with no values (`[R, L, 0]`); `loaders.device_features.DeviceFeaturizer` fills
them on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

PATCH_VALUES = 256
DRAWS = ("keep", "noise", "mix")  # `Waveforms`' optional tensors: keyed draws that ship beside the layout


@dataclass(frozen=True)
class Waveforms:
    """The waveforms of a batch's samples end to end, and per sample where they are and how they
    become tokens (`loaders.device_features.LAYOUT`: the plan's layout, in the batch's sample
    order), with the keyed draws of the recipe that do not fit an integer column. The totals are
    host integers, so a device featurizes without waiting on the host."""

    samples: torch.Tensor  # [N] int16 (PCM as stored) or float32: the samples', then their mixup partners'
    layout: torch.Tensor  # [S, len(LAYOUT)] int64
    frames: int  # analysis frames to compute, all samples together
    pooled: int  # frames after average-pooling
    kept: int  # frames of the model's input (a multiple of 16 per sample)
    max_pool: int
    tokens: int  # tokens placed in the rows (after token dropout)
    clip_samples: int  # of `samples`, the samples' own (their mixup partners' follow)
    keep: torch.Tensor | None = None  # [tokens] int64: each placed token's index among its sample's patches
    noise: torch.Tensor | None = None  # [kept, 128] float32: each sample's noise, scaled (`loaders.noise`)
    mix: torch.Tensor | None = None  # [S] float32: each sample's mixup weight lambda (1: unmixed; `loaders.mixup`)

    def to(self, device: torch.device | str) -> Waveforms:
        return self.map(lambda t: t.to(device))

    def map(self, fn) -> Waveforms:
        """These waveforms with `fn` applied to every tensor."""
        return replace(self, **_mapped(self, fn))


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
    requests: int = 0  # storage requests the batch's reads took (retries included)
    retries: int = 0  # of those, retries after transient storage errors
    sources: list[int] = field(default_factory=list)  # in a mix: each sample's source (else empty)
    audio: Waveforms | None = None  # to featurize on the trainer's device (see the module docstring)
    targets: torch.Tensor | None = None  # mixup: [S, classes] float32 soft targets (`loaders.mixup`), else None
    draws: list[int] = field(default_factory=list)  # balanced sampling: each sample's draw index (else empty)

    @property
    def num_samples(self) -> int:
        return len(self.keys)

    @property
    def sample_ids(self) -> list[str]:
        """What names a delivered sample: its key, in a mix `source/key` (keys may repeat across sources),
        under balanced sampling `key#draw` (a key may be drawn more than once)."""
        ids = [f"{s}/{k}" for s, k in zip(self.sources, self.keys)] if self.sources else list(self.keys)
        return [f"{i}#{d}" for i, d in zip(ids, self.draws)] if self.draws else ids

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

    @property
    def featurized(self) -> bool:
        """Whether `patches` hold values (False: `audio` awaits the device featurizer)."""
        return self.audio is None

    def attention_mask(self) -> torch.Tensor:
        """Dense `[R, L, L]` boolean mask (True = may attend): same segment, not padding.
        The readable reference; the model's kernels work from `segment_ids`."""
        ids = self.segment_ids
        return (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & (ids > 0).unsqueeze(-1)

    def _map(self, fn) -> PackedBatch:
        moved = _mapped(self, fn)
        if self.audio is not None:
            moved["audio"] = self.audio.map(fn)
        return replace(self, **moved)


def _mapped(instance, fn) -> dict:
    """`fn` of each tensor field of a dataclass instance, by name."""
    values = {f.name: getattr(instance, f.name) for f in fields(instance)}
    return {name: fn(value) for name, value in values.items() if isinstance(value, torch.Tensor)}


def from_features(
    features: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    row: np.ndarray,
    offset: np.ndarray,
    scale: np.ndarray,
    keys: Sequence[str],
    labels: torch.Tensor | None = None,
    length: int | None = None,
    rows: int | None = None,
) -> PackedBatch:
    """A `PackedBatch` from (patches, freq_pos, time_pos) per sample, its row, first token,
    scale, key and label (zeros when absent, e.g. for inference). `rows` rows of `length` tokens,
    or as many and as long as the samples need; no samples and both given: an all-padding batch.
    Samples are listed row by row in offset order, as `PackedBatch` is."""
    sizes = np.array([f[0].shape[0] for f in features], dtype=np.int64)
    rows, length = rows or int(row.max()) + 1, length or int((offset + sizes).max())
    patches = torch.zeros(rows, length, PATCH_VALUES)
    segment_ids = torch.zeros(rows, length, dtype=torch.int32)
    freq_pos = torch.zeros(rows, length, dtype=torch.int64)
    time_pos = torch.zeros(rows, length, dtype=torch.int64)
    order = np.lexsort((offset, row))
    slot = np.zeros(len(order), dtype=np.int64)
    used = np.zeros(rows, dtype=np.int64)
    for position, i in enumerate(order):
        r, span = int(row[i]), slice(int(offset[i]), int(offset[i] + sizes[i]))
        used[r] += 1
        slot[position] = used[r]
        patches[r, span], freq_pos[r, span], time_pos[r, span] = features[i]
        segment_ids[r, span] = int(used[r])
    return PackedBatch(
        patches=patches,
        segment_ids=segment_ids,
        freq_pos=freq_pos,
        time_pos=time_pos,
        labels=torch.zeros(len(order), dtype=torch.int64) if labels is None else labels[order],
        row=torch.from_numpy(row[order].astype(np.int64)),
        slot=torch.from_numpy(slot),
        n_tokens=torch.from_numpy(sizes[order]),
        scale=torch.as_tensor(scale[order], dtype=torch.float32),
        keys=[keys[i] for i in order],
        is_padding=not len(order),
    )
