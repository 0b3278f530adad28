"""Inference on audio files or waveforms of any length and number: `Classifier.predict`.

Serves every checkpoint the trainer writes (`elasticast.checkpoint`): ElasticAST or the AST
baseline, trained with frame-shift or avgpool resolutions. Features come from the loader's own
featurizer (`loaders.device_features.DeviceFeaturizer`, the CPU path's numbers in one batched pass
on the model's device) with the checkpoint's fbank statistics and compression, so inference sees
exactly what training saw. Clips are planned
from their lengths alone (`loaders.tokens.token_counts`), packed first-fit into rows of
`max_tokens`, and featurized batch by batch.

Resolution: a fixed `scale` C (frame shift 10*C ms), or `token_budget=N` to pick per clip the
smallest C in {1.0, 1.2, ..., 4.0} whose whole clip fits in N tokens.

Long clips: with the paper's feature recipe (or a fixed input length), a clip is cropped to its
first frames, as the paper's code does. Otherwise (sliding windows) a clip with more than F frames at its scale, F being the frames one
model input holds (ElasticAST: its `max_frames` in whole 16-frame patches; AST: the size it was
trained at), is cut into windows of the WAVEFORM, each exactly F frames long: W = window +
(F * p - 1) * shift samples, with window = 25 ms, shift = 10*C ms (avgpool: 10 ms) in samples and
p = 1 (avgpool: p = C frames pooled into one). Windows start every H = (F // 2) * p * shift samples
(50 % overlap, on the clip's frame grid) at 0, H, 2H, ... below n - W, and a last window starts at
n - W so that it ends at the clip's end: no sample is skipped. The windows' logits are averaged,
then turned into probabilities. E.g. 16 kHz, C = 1, F = 3072: W = 491,760 samples (30.7 s),
H = 245,760 (15.4 s). An AST input shorter than F is zero-padded to F, as in its training.

Checkpoints and audio files may be local paths or URLs (`s3://bucket/model.pt`, `https://...`;
see `shards.location`): a remote file is read whole, then decoded from memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from elasticast.ast_baseline import ASTBaseline
from elasticast.checkpoint import Model, load_checkpoint, model_from_checkpoint
from loaders.device_features import DeviceFeaturizer
from loaders.feature_spec import FeatureSpec
from loaders.pack import Packing, pack
from loaders.tokens import (
    FRAME_LENGTH_MS,
    FREQ_TOKENS,
    N_MELS,
    PATCH,
    SCALE_GRID,
    SCALE_RANGE,
    TokenCounts,
    frame_samples,
    resolution,
)
from shards.audio import load_source, resample
from shards.location import Location

AudioInput = str | Path | Location | np.ndarray | torch.Tensor


@dataclass(frozen=True, eq=False)
class Prediction:
    """One clip's result. `logits` are the window-averaged logits the probabilities come from
    (softmax if single-label, sigmoid if multi-label); `windows` is 1 unless the clip was longer
    than the model's input frames at `scale`."""

    probabilities: np.ndarray
    logits: np.ndarray
    label: str
    labels: tuple[str, ...]
    scale: float
    windows: int


@dataclass(frozen=True)
class _Window:
    """A span of one clip's waveform that becomes one packed sample."""

    clip: int
    start: int
    length: int
    scale: float
    tokens: int


class Classifier:
    """Probabilities and label names for clips of any length, from a trained ElasticAST or AST.

    `features`: how the model was trained to see audio (rate, fbank statistics, compression).
    `predict` puts the model in eval mode; the model stays on its own device.
    """

    def __init__(self, model: Model, labels: Sequence[str], features: FeatureSpec):
        config = model.config
        if config.patch != PATCH or config.n_mels != N_MELS:
            raise ValueError(
                f"model has patch {config.patch} and n_mels {config.n_mels}; the loader's features "
                f"are {PATCH}x{PATCH} patches of {N_MELS} mel bins"
            )
        if len(labels) != config.num_classes:
            raise ValueError(f"{len(labels)} labels for a model with num_classes {config.num_classes}")
        self.model = model
        self.labels = tuple(str(label) for label in labels)
        self.features = features
        self.featurizer = DeviceFeaturizer(features)
        self.frames = model.target_frames if isinstance(model, ASTBaseline) else config.time_patches * PATCH
        self.budget_scales = (
            SCALE_GRID if features.compression == "shift" else tuple(c for c in SCALE_GRID if c.is_integer())
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | Location, device: str | torch.device = "cpu") -> Classifier:
        """A classifier from a `save_checkpoint` file (a path or URL), its model on `device`."""
        checkpoint = load_checkpoint(path, device)
        return cls(model_from_checkpoint(checkpoint, device), checkpoint.labels, checkpoint.features)

    def predict(
        self,
        inputs: Sequence[AudioInput],
        sample_rate: int | None = None,
        scale: float | None = None,
        token_budget: int | None = None,
        max_tokens: int = 2048,
        batch_rows: int = 8,
    ) -> list[Prediction]:
        """One `Prediction` per input, in input order.

        inputs: audio file paths or URLs (decoded and resampled to the model's rate) and/or 1-D mono
            waveforms, which need `sample_rate` (resampled if it differs from the model's).
        scale: resolution C for every clip (default 1.0; avgpool models take whole C only).
            token_budget: per clip, the smallest C of the training grid {1.0, 1.2, ..., 4.0}
            (avgpool: {1, 2, 3, 4}) whose whole-clip token count (without the crop) is
            <= token_budget; if even C = 4.0 exceeds it, C = 4.0 is used. Either way a clip
            longer than the model's input frames at its C is windowed (module docstring), which
            then costs about twice its token count (50 % overlap).
        max_tokens: tokens per packed row (must hold one window).
        batch_rows: rows per model call.
        """
        if isinstance(inputs, (str, Path, Location, np.ndarray, torch.Tensor)):
            raise TypeError(f"predict takes a list of inputs, got a single {type(inputs).__name__}: pass [x]")
        if scale is not None and token_budget is not None:
            raise ValueError(f"pass scale ({scale}) or token_budget ({token_budget}), not both")
        fixed = self._checked_scale(1.0 if scale is None else scale)
        budget = None if token_budget is None else _positive_int("token_budget", token_budget)
        window_tokens = self.frames // PATCH * FREQ_TOKENS
        if _positive_int("max_tokens", max_tokens) < window_tokens:
            raise ValueError(
                f"max_tokens {max_tokens} cannot hold one window of {self.frames} frames "
                f"({window_tokens} tokens): use max_tokens >= {window_tokens}"
            )
        _positive_int("batch_rows", batch_rows)
        waveforms = [self._waveform(item, sample_rate, i) for i, item in enumerate(inputs)]
        scales = [fixed if budget is None else self._scale_within(len(wave), budget) for wave in waveforms]
        windows = [
            w for clip, (wave, c) in enumerate(zip(waveforms, scales)) for w in self._windows(clip, len(wave), c)
        ]
        if not windows:
            return []
        logits = self._window_logits(waveforms, windows, max_tokens, batch_rows)
        clip = torch.tensor([w.clip for w in windows])
        count = torch.bincount(clip, minlength=len(waveforms))
        means = torch.zeros(len(waveforms), logits.shape[1]).index_add_(0, clip, logits) / count[:, None]
        return [self._prediction(mean, c, int(n)) for mean, c, n in zip(means, scales, count)]

    def _waveform(self, item: AudioInput, sample_rate: int | None, index: int) -> np.ndarray:
        """Mono float32 at the model's rate; errors name the input by position."""
        rate = self.features.sample_rate
        if isinstance(item, (str, Path, Location)):
            return load_source(str(item), rate)[0]  # a URL is read whole, then decoded from memory
        if not isinstance(item, (np.ndarray, torch.Tensor)):
            raise TypeError(f"input {index} is a {type(item).__name__}: expected a path or a 1-D waveform")
        if sample_rate is None:
            raise ValueError(f"input {index} is a waveform: pass its sample_rate")
        wave = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"input {index} has shape {wave.shape}: expected a non-empty 1-D mono waveform")
        if not np.isfinite(wave).all():
            raise ValueError(f"input {index} contains NaN or Inf")
        given = _positive_int("sample_rate", sample_rate)
        return wave if given == rate else resample(wave, given, rate)

    def _checked_scale(self, scale: float) -> float:
        """C rounded to one decimal, as `shift_for_scale` applies it; whole for avgpool models."""
        if not SCALE_RANGE[0] <= float(scale) <= SCALE_RANGE[1]:
            raise ValueError(f"scale {scale} is outside {list(SCALE_RANGE)}")
        resolution(scale, self.features.compression)
        return round(float(scale), 1)

    def _counts(self, num_samples: int, scale: float | Sequence[float]) -> TokenCounts:
        return self.features.counts(num_samples, scale, max_frames=self.frames)

    def _scale_within(self, num_samples: int, token_budget: int) -> float:
        """The smallest grid C whose whole clip (tokens + cut) fits, else the largest."""
        counts = self._counts(num_samples, self.budget_scales)
        fits = counts.tokens + counts.cut <= token_budget
        return self.budget_scales[int(np.argmax(fits))] if fits.any() else self.budget_scales[-1]

    def _windows(self, clip: int, num_samples: int, scale: float) -> list[_Window]:
        """The whole clip, or windows of the model's input frames at a 50 % hop, the last one
        ending at the clip's end."""
        counts = self._counts(num_samples, scale)
        if not counts.cut or self.features.crops_long_clips:
            return [_Window(clip, 0, num_samples, scale, int(counts.tokens))]
        shift_ms, pool = self.features.resolution(scale)
        shift, rate = int(frame_samples(self.features.sample_rate, shift_ms)), self.features.sample_rate
        size = int(frame_samples(rate, FRAME_LENGTH_MS)) + (self.frames * int(pool) - 1) * shift
        starts = [*range(0, num_samples - size, self.frames // 2 * int(pool) * shift), num_samples - size]
        tokens = self.frames // PATCH * FREQ_TOKENS
        return [_Window(clip, start, size, scale, tokens) for start in starts]

    def _window_logits(
        self, waveforms: list[np.ndarray], windows: list[_Window], max_tokens: int, batch_rows: int
    ) -> torch.Tensor:
        """Logits `[windows, classes]`: windows packed first-fit, featurized one batch at a time."""
        counts = np.array([w.tokens for w in windows], dtype=np.int64)
        layout = Packing.from_rows(counts, pack(counts, max_tokens, mode="first_fit", buffer=len(windows)), max_tokens)
        order, starts = layout.members()
        device = next(self.model.parameters()).device
        logits = torch.empty(len(windows), self.model.config.num_classes)
        self.model.eval()
        for first in range(0, layout.n_rows, batch_rows):
            members = order[starts[first] : starts[min(first + batch_rows, layout.n_rows)]]
            batch = self.featurizer.packed(
                [self._kept_audio(waveforms[windows[i].clip], windows[i]) for i in members],
                layout.row[members] - first,
                layout.offset[members],
                np.array([windows[i].scale for i in members]),
                counts[members],
                [str(i) for i in members],
                device,
            )
            with torch.no_grad():
                logits[[int(key) for key in batch.keys]] = self.model(batch).float().cpu()
        return logits

    def _kept_audio(self, waveform: np.ndarray, window: _Window) -> np.ndarray:
        """The window's span of the clip, cut to the samples its kept frames read."""
        span = waveform[window.start : window.start + window.length]
        return span[: self.features.samples_needed(len(span), window.scale, max_frames=self.frames)]

    def _prediction(self, logits: torch.Tensor, scale: float, windows: int) -> Prediction:
        probabilities = logits.sigmoid() if self.features.multi_label else logits.softmax(dim=0)
        return Prediction(
            probabilities=probabilities.numpy(),
            logits=logits.numpy(),
            label=self.labels[int(probabilities.argmax())],
            labels=self.labels,
            scale=scale,
            windows=windows,
        )


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
