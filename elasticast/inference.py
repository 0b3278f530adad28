"""Inference on audio files or waveforms of any length and number: `Classifier.predict`.

Features come from the loader's own functions (`loaders.features.spectrogram`, `patchify`) with
the checkpoint's fbank statistics, so inference sees exactly what training saw. Clips are planned
from their lengths alone (`loaders.tokens.token_counts`), packed first-fit into rows of
`max_tokens`, and featurized batch by batch.

Resolution: a fixed `scale` C (frame shift 10*C ms), or `token_budget=N` to pick per clip the
smallest C in {1.0, 1.2, ..., 4.0} whose whole clip fits in N tokens.

Long clips (sliding windows): a clip with more than F frames at its scale, F being the model's
`max_frames` floored to whole 16-frame patches, is cut into windows of the WAVEFORM, each exactly
F frames long: W = window + (F - 1) * shift samples, with window = 25 ms and shift = 10*C ms in
samples. Windows start every H = (F // 2) * shift samples (50 % overlap, on the clip's frame
grid) at 0, H, 2H, ... below n - W, and a last window starts at n - W so that it ends at the
clip's end: no sample is skipped. The windows' logits are averaged, then turned into
probabilities. E.g. 16 kHz, C = 1, F = 3072: W = 491,760 samples (30.7 s), H = 245,760 (15.4 s).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from elasticast.config import ModelConfig
from elasticast.model import ElasticAST
from loaders.batch import from_features
from loaders.features import NUM_MEL_BINS, PATCH, patchify, spectrogram
from loaders.pack import Packing, pack
from loaders.tokens import FRAME_LENGTH_MS, TokenCounts, frame_samples, shift_for_scale, token_counts
from shards.audio import load_source, resample

FORMAT = "elasticast-checkpoint"
FORMAT_VERSION = 1
BUDGET_SCALES = tuple(round(1.0 + 0.2 * k, 1) for k in range(16))  # the training grid 1.0 .. 4.0
SCALE_RANGE = (1.0, 8.0)  # the range `loaders.plan.PlanConfig` accepts
FREQ_TOKENS = NUM_MEL_BINS // PATCH

AudioInput = str | Path | np.ndarray | torch.Tensor


@dataclass(frozen=True, eq=False)
class Prediction:
    """One clip's result. `logits` are the window-averaged logits the probabilities come from
    (softmax if single-label, sigmoid if multi-label); `windows` is 1 unless the clip was longer
    than the model's `max_frames` at `scale`."""

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


def save_checkpoint(
    path: str | Path,
    model: ElasticAST,
    labels: Sequence[str],
    fbank_stats: dict,
    sample_rate: int,
    multi_label: bool,
    extra: dict | None = None,
    compression: str = "shift",
) -> None:
    """Everything inference needs in one `torch.save` dict, so a checkpoint alone predicts.

    fbank_stats: at least "mean" and "std" (as `ShardDataset.fbank_stats`). extra: anything the
    trainer wants back (plain Python values and tensors: loading uses `weights_only=True`).
    compression: how the model saw C > 1 in training ("shift" or "avgpool").
    """
    missing = {"mean", "std"} - set(fbank_stats or {})
    if missing:
        raise ValueError(f"fbank_stats lacks {sorted(missing)}: pass the shard set's fbank statistics")
    _check_labels(labels, model.config)
    torch.save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(model.config),
            "state_dict": model.state_dict(),
            "labels": [str(label) for label in labels],
            "fbank": {"mean": float(fbank_stats["mean"]), "std": float(fbank_stats["std"])},
            "sample_rate": int(sample_rate),
            "multi_label": bool(multi_label),
            "compression": compression,
            "extra": extra or {},
        },
        Path(path),
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The checkpoint dict, validated: a missing file or another format is refused by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ElasticAST checkpoint (no format {FORMAT!r}); write it with save_checkpoint")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format_version {checkpoint.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
    return checkpoint


class Classifier:
    """Probabilities and label names for clips of any length, from a trained ElasticAST.

    `predict` puts the model in eval mode; the model stays on its own device.
    """

    def __init__(
        self, model: ElasticAST, labels: Sequence[str], mean: float, std: float, sample_rate: int, multi_label: bool = False
    ):
        config = model.config
        if config.patch != PATCH or config.n_mels != NUM_MEL_BINS:
            raise ValueError(
                f"model has patch {config.patch} and n_mels {config.n_mels}; the loader's features "
                f"are {PATCH}x{PATCH} patches of {NUM_MEL_BINS} mel bins"
            )
        _check_labels(labels, config)
        if std <= 0:
            raise ValueError(f"fbank std must be > 0, got {std}")
        self.model = model
        self.labels = tuple(str(label) for label in labels)
        self.mean, self.std = float(mean), float(std)
        self.sample_rate = _positive_int("sample_rate", sample_rate)
        self.multi_label = bool(multi_label)
        self.max_frames = config.time_patches * PATCH

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Classifier:
        """A classifier from a `save_checkpoint` file, its model on `device`."""
        checkpoint = load_checkpoint(path, device)
        if checkpoint.get("compression", "shift") != "shift":
            raise ValueError(
                f"{path} was trained with {checkpoint['compression']!r} compression; Classifier featurizes "
                "with frame-shift resolutions only, so its predictions would not match the training features"
            )
        model = ElasticAST(ModelConfig(**checkpoint["config"]))
        model.load_state_dict(checkpoint["state_dict"])
        fbank = checkpoint["fbank"]
        return cls(
            model.to(device), checkpoint["labels"], fbank["mean"], fbank["std"], checkpoint["sample_rate"], checkpoint["multi_label"]
        )

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

        inputs: audio file paths (decoded and resampled to the model's rate) and/or 1-D mono
            waveforms, which need `sample_rate` (resampled if it differs from the model's).
        scale: resolution C for every clip (default 1.0). token_budget: per clip, the smallest C
            in {1.0, 1.2, ..., 4.0} whose whole-clip token count (without the max_frames crop)
            is <= token_budget; if even C = 4.0 exceeds it, C = 4.0 is used. Either way a clip
            longer than max_frames at its C is windowed (module docstring), which then costs
            about twice its token count (50 % overlap).
        max_tokens: tokens per packed row (must hold one max_frames window).
        batch_rows: rows per model call.
        """
        if isinstance(inputs, (str, Path, np.ndarray, torch.Tensor)):
            raise TypeError(f"predict takes a list of inputs, got a single {type(inputs).__name__}: pass [x]")
        if scale is not None and token_budget is not None:
            raise ValueError(f"pass scale ({scale}) or token_budget ({token_budget}), not both")
        fixed = _checked_scale(1.0 if scale is None else scale)
        budget = None if token_budget is None else _positive_int("token_budget", token_budget)
        window_tokens = self.max_frames // PATCH * FREQ_TOKENS
        if _positive_int("max_tokens", max_tokens) < window_tokens:
            raise ValueError(
                f"max_tokens {max_tokens} cannot hold one window of max_frames {self.max_frames} "
                f"({window_tokens} tokens): use max_tokens >= {window_tokens}"
            )
        _positive_int("batch_rows", batch_rows)
        waveforms = [self._waveform(item, sample_rate, i) for i, item in enumerate(inputs)]
        scales = [fixed if budget is None else self._scale_within(len(wave), budget) for wave in waveforms]
        windows = [w for clip, (wave, c) in enumerate(zip(waveforms, scales)) for w in self._windows(clip, len(wave), c)]
        if not windows:
            return []
        logits = self._window_logits(waveforms, windows, max_tokens, batch_rows)
        clip = torch.tensor([w.clip for w in windows])
        count = torch.bincount(clip, minlength=len(waveforms))
        means = torch.zeros(len(waveforms), logits.shape[1]).index_add_(0, clip, logits) / count[:, None]
        return [self._prediction(mean, c, int(n)) for mean, c, n in zip(means, scales, count)]

    def _waveform(self, item: AudioInput, sample_rate: int | None, index: int) -> np.ndarray:
        """Mono float32 at the model's rate; errors name the input by position."""
        if isinstance(item, (str, Path)):
            return load_source(item, self.sample_rate)[0]
        if not isinstance(item, (np.ndarray, torch.Tensor)):
            raise TypeError(f"input {index} is a {type(item).__name__}: expected a path or a 1-D waveform")
        if sample_rate is None:
            raise ValueError(f"input {index} is a waveform: pass its sample_rate")
        wave = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"input {index} has shape {wave.shape}: expected a non-empty 1-D mono waveform")
        if not np.isfinite(wave).all():
            raise ValueError(f"input {index} contains NaN or Inf")
        rate = _positive_int("sample_rate", sample_rate)
        return wave if rate == self.sample_rate else resample(wave, rate, self.sample_rate)

    def _counts(self, num_samples: int, scale: float | Sequence[float]) -> TokenCounts:
        return token_counts(num_samples, self.sample_rate, shift_for_scale(scale), max_frames=self.max_frames)

    def _scale_within(self, num_samples: int, token_budget: int) -> float:
        """The smallest grid C whose whole clip (tokens + max_frames cut) fits, else the largest."""
        counts = self._counts(num_samples, BUDGET_SCALES)
        fits = counts.tokens + counts.cut <= token_budget
        return BUDGET_SCALES[int(np.argmax(fits))] if fits.any() else BUDGET_SCALES[-1]

    def _windows(self, clip: int, num_samples: int, scale: float) -> list[_Window]:
        """The whole clip, or max_frames windows at a 50 % hop, the last one ending at the end."""
        counts = self._counts(num_samples, scale)
        if not counts.cut:
            return [_Window(clip, 0, num_samples, scale, int(counts.tokens))]
        shift = int(frame_samples(self.sample_rate, shift_for_scale(scale)))
        size = int(frame_samples(self.sample_rate, FRAME_LENGTH_MS)) + (self.max_frames - 1) * shift
        starts = [*range(0, num_samples - size, self.max_frames // 2 * shift), num_samples - size]
        tokens = self.max_frames // PATCH * FREQ_TOKENS
        return [_Window(clip, start, size, scale, tokens) for start in starts]

    def _window_logits(self, waveforms: list[np.ndarray], windows: list[_Window], max_tokens: int, batch_rows: int) -> torch.Tensor:
        """Logits `[windows, classes]`: windows packed first-fit, featurized one batch at a time."""
        counts = np.array([w.tokens for w in windows], dtype=np.int64)
        layout = Packing.from_rows(counts, pack(counts, max_tokens, mode="first_fit", buffer=len(windows)), max_tokens)
        order, starts = layout.members()
        device = next(self.model.parameters()).device
        logits = torch.empty(len(windows), self.model.config.num_classes)
        self.model.eval()
        for first in range(0, layout.n_rows, batch_rows):
            members = order[starts[first] : starts[min(first + batch_rows, layout.n_rows)]]
            features = [self._features(waveforms[windows[i].clip], windows[i]) for i in members]
            scales = np.array([windows[i].scale for i in members])
            batch = from_features(features, layout.row[members] - first, layout.offset[members], scales, [str(i) for i in members])
            with torch.no_grad():
                logits[[int(key) for key in batch.keys]] = self.model(batch.to(device)).float().cpu()
        return logits

    def _features(self, waveform: np.ndarray, window: _Window) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        span = waveform[window.start : window.start + window.length]
        spec = spectrogram(span, self.sample_rate, window.scale, mean=self.mean, std=self.std, max_frames=self.max_frames)
        return patchify(spec)

    def _prediction(self, logits: torch.Tensor, scale: float, windows: int) -> Prediction:
        probabilities = logits.sigmoid() if self.multi_label else logits.softmax(dim=0)
        return Prediction(
            probabilities=probabilities.numpy(),
            logits=logits.numpy(),
            label=self.labels[int(probabilities.argmax())],
            labels=self.labels,
            scale=scale,
            windows=windows,
        )


def _check_labels(labels: Sequence[str], config: ModelConfig) -> None:
    if len(labels) != config.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with num_classes {config.num_classes}")


def _checked_scale(scale: float) -> float:
    """C rounded to one decimal, as `shift_for_scale` applies it."""
    if not SCALE_RANGE[0] <= float(scale) <= SCALE_RANGE[1]:
        raise ValueError(f"scale {scale} is outside {list(SCALE_RANGE)}")
    return round(float(scale), 1)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
