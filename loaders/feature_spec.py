"""`FeatureSpec`: how audio becomes a model's input, described once.

The shard set's statistics give its rate, mean and std (`of_shards`); a stream adds its
compression and frame cap and featurizes by it (`loaders.assemble`); the trainer records it in
the checkpoint; `Classifier` and the evaluation featurize by the checkpoint's. So a model is
always fed as it was trained, whichever path the audio takes.

Recipes: "elasticast" (ours) and "paper" (the reference code of the paper, which its released
checkpoints were trained with). Both remove the waveform's mean (theirs over the whole file, ours
over the audio the kept frames read: the same fbank, since Kaldi removes each frame's own mean
before anything else), normalise as
`(fbank - mean) / (2 * std)`, floor frames to a multiple of 16 and cap them at `max_frames`.
The paper's recipe differs in two places: padding is zeros of the fbank, normalised with the
rest (ours: zeros after normalising, the dataset mean), and a clip longer than the cap is
cropped to its first `max_frames` frames where `Classifier` would otherwise average windows.
`fixed_frames` (the paper's fixed-length resolution mode, AudioSet and VGGSound): every clip is
cropped or padded to `int(fixed_frames / C)` frames, floored to 16. `frame_shift_ms`: the frame
shift at C = 1, 10 ms but for the paper's Epic-Sounds recipe (5 ms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from loaders.config import StreamConfig
from loaders.features import samples_needed, spectrogram
from loaders.tokens import BASE_SHIFT_MS, COMPRESSIONS, PATCH, RECIPES, TokenCounts, clip_counts, resolution


@dataclass(frozen=True)
class FeatureSpec:
    """How a model's input is made from audio (see the module docstring)."""

    sample_rate: int
    mean: float
    std: float
    compression: str = "shift"
    max_frames: int = 3072
    multi_label: bool = False
    recipe: str = "elasticast"
    fixed_frames: int | None = None
    frame_shift_ms: float = BASE_SHIFT_MS

    def __post_init__(self):
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression {self.compression!r} is not one of {COMPRESSIONS}")
        if self.recipe not in RECIPES:
            raise ValueError(f"feature recipe {self.recipe!r} is not one of {RECIPES}")
        if self.sample_rate < 1 or self.std <= 0:
            raise ValueError(f"sample_rate ({self.sample_rate}) and fbank std ({self.std}) must be > 0")
        if self.frame_shift_ms <= 0:
            raise ValueError(f"frame_shift_ms must be > 0, got {self.frame_shift_ms}")
        for name in ("max_frames", "fixed_frames"):
            value = getattr(self, name)
            if value is not None and value < PATCH:
                raise ValueError(f"{name} ({value}) is shorter than one {PATCH}-frame patch")

    @classmethod
    def of_shards(cls, meta: dict, stream: StreamConfig | None = None, **settings) -> FeatureSpec:
        """The features of a shard set (its `dataset.json` content: rate, fbank statistics, label
        type), at a stream's compression and frame cap; `settings` (field names) override."""
        stats = meta.get("fbank")
        if not stats:
            raise ValueError("the shard set has no fbank statistics: rebuild it with make_shards")
        fields = dict(sample_rate=meta["sample_rate"], mean=stats["mean"], std=stats["std"])
        fields["multi_label"] = bool(meta.get("multi_label"))
        if stream is not None:
            fields |= dict(compression=stream.compression, max_frames=stream.max_frames)
        return cls(**(fields | settings))

    @property
    def crops_long_clips(self) -> bool:
        """A clip longer than the input is cropped (the paper's recipe, fixed lengths), not windowed."""
        return self.recipe == "paper" or self.fixed_frames is not None

    def counts(
        self, num_samples: ArrayLike, scale: ArrayLike = 1.0, *, sample_rate: ArrayLike | None = None, **limits
    ) -> TokenCounts:
        """Tokens of clips at `scale` (`limits`: max_frames, capacity; max_frames defaults to ours)."""
        rate = self.sample_rate if sample_rate is None else sample_rate
        return clip_counts(num_samples, rate, scale, **self._options(limits))

    def samples_needed(self, num_samples: int, scale: float = 1.0, **limits) -> int:
        return samples_needed(num_samples, self.sample_rate, scale, **self._options(limits))

    def spectrogram(self, waveform: np.ndarray | torch.Tensor, scale: float = 1.0, **limits) -> torch.Tensor:
        """The model's input `[frames, 128]` of a waveform at this rate (`loaders.features.spectrogram`)."""
        return spectrogram(
            waveform,
            self.sample_rate,
            scale,
            mean=self.mean,
            std=self.std,
            pad_before_normalising=self.recipe == "paper",
            **self._options(limits),
        )

    def resolution(self, scale: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(frame shift in ms, pooling factor) at C (`loaders.tokens.resolution`)."""
        return resolution(scale, self.compression, self.frame_shift_ms)

    @property
    def framing(self) -> dict:
        """How frames are made beyond the compression and the caps: the fixed length and the shift at C = 1."""
        return {"fixed_frames": self.fixed_frames, "base_shift_ms": self.frame_shift_ms}

    def _options(self, limits: dict) -> dict:
        unknown = set(limits) - {"max_frames", "capacity"}
        if unknown:
            raise TypeError(f"unknown limits {sorted(unknown)}: pass max_frames or capacity")
        return {
            "compression": self.compression,
            "max_frames": limits.get("max_frames", self.max_frames),
            "capacity": limits.get("capacity"),
            **self.framing,
        }
