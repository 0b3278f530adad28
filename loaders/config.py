"""`StreamConfig`: every setting of a packed stream, declared once.

The plan (`loaders.plan`) reads its packing fields, the workers (`loaders.assemble`) its feature
fields, and `PackedStream` its execution fields; trainers build one (`TrainConfig.stream`) and
pass it on, so no caller maps settings by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from loaders.pack import MODES
from loaders.tokens import COMPRESSIONS, PATCH, SCALE_RANGE, resolution
from shards.parallel import BACKENDS
from shards.retry import DEFAULT_TIMEOUT_S

WEIGHT_BY = ("samples", "duration", "tokens")  # what a mix's weights measure
FEATURIZE = ("loader", "device")  # where fbanks are made: in the loader's workers, or on the trainer's device
SAMPLINGS = ("uniform", "balanced")  # how an epoch's samples are chosen (`loaders.balance`)


@dataclass(frozen=True)
class StreamConfig:
    """rows_per_batch x max_tokens: every batch's shape. packing/buffer/max_per_row: the packer.
    scales: resolutions C drawn per sample (keyed by seed, epoch and key). compression: how C is made.
    max_frames: the crop of over-long clips. freq_mask/time_mask: SpecAugment widths (0 = off).
    backend: "ray" (Ray Data tasks) or "local" (in-process); workers/worker_cpus: Ray tasks
    assembling batches concurrently, CPUs each (fractions allowed); prefetch: batches fetched ahead
    (from Ray's tasks; in-process, batches whose bytes a reader thread reads ahead).
    torch_threads: torch threads while featurizing (None: the caller's), in-process, in DataLoader
    workers and in Ray tasks; the caller's count is restored after each batch.
    weights / weight_by: a stream of several sources (`loaders.mix`): each source's share of an
    epoch, measured in samples, seconds of audio or tokens (None: in proportion to their sizes).
    storage_timeout: seconds a batch's reads wait for an unreachable store before the stream
    raises `shards.retry.StorageFailure` (never a hole). max_failed: holes (samples whose bytes
    are bad, left as padding) allowed per pass before the stream raises `FailureBudgetExceeded`:
    a count (>= 1) or a fraction of the pass's samples (< 1); None: no limit.
    token_dropout: share of each sample's patch tokens dropped (NaViT-style; the plan packs the kept
    ones, `loaders.dropout`). token_dropout_max: instead, a rate per sample drawn from U(0, max).
    random_cut: min frames of a random window taken per sample and epoch (`loaders.cuts`; 0 = off).
    noise: light uniform noise and a time roll of up to 10 frames on the fbank (`loaders.noise`).
    mixup: the share of samples mixed with a partner drawn from the split (`loaders.mixup`; 0 = off),
    with lambda ~ Beta(mixup_alpha, mixup_alpha). These five are training augmentations:
    `without_augmentation()` turns them off for validation and evaluation. sampling: "uniform"
    (every sample once per epoch) or "balanced" (as many draws with replacement, by the index's
    weights: `loaders.balance`). featurize: where fbanks are made: "loader" (the workers ship
    patches) or "device" (the workers ship int16 waveforms, mixup partners' too, the plan's layout
    and the recipe's keyed draws; the trainer runs `loaders.device_features` on its device before
    the forward pass): the same numbers, with every option above."""

    rows_per_batch: int
    max_tokens: int = 2048
    packing: str = "first_fit"
    buffer: int = 256
    scales: tuple[float, ...] = (1.0,)
    compression: str = "shift"
    max_frames: int = 3072
    shuffle: bool = True
    seed: int = 0
    max_per_row: int | None = None
    freq_mask: int = 0
    time_mask: int = 0
    backend: str = "ray"
    workers: int = 2
    worker_cpus: float = 1.0
    prefetch: int = 2
    torch_threads: int | None = 1
    weights: tuple[float, ...] | None = None
    weight_by: str = "samples"
    storage_timeout: float = DEFAULT_TIMEOUT_S
    max_failed: float | None = None
    token_dropout: float = 0.0
    token_dropout_max: float = 0.0
    random_cut: int = 0
    noise: bool = False
    featurize: str = "loader"
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    sampling: str = "uniform"

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(c) for c in self.scales))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
            if not self.weights or min(self.weights) <= 0:
                raise ValueError(f"weights {self.weights} must be a non-empty set of values > 0")
        choices = (
            ("packing", MODES),
            ("compression", COMPRESSIONS),
            ("backend", BACKENDS),
            ("weight_by", WEIGHT_BY),
            ("featurize", FEATURIZE),
            ("sampling", SAMPLINGS),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {allowed}")
        for name in ("rows_per_batch", "max_tokens", "buffer", "max_frames", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.scales or any(not SCALE_RANGE[0] <= c <= SCALE_RANGE[1] for c in self.scales):
            raise ValueError(f"scales {self.scales} must be a non-empty set of values in {list(SCALE_RANGE)}")
        resolution(self.scales, self.compression)  # avgpool refuses fractional C here, not mid-epoch
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None (the caller's), got {self.torch_threads}")
        if self.freq_mask < 0 or self.time_mask < 0 or self.worker_cpus <= 0 or self.prefetch < 0:
            raise ValueError("freq_mask, time_mask and prefetch must be >= 0 and worker_cpus > 0")
        if self.storage_timeout < 0 or (self.max_failed is not None and self.max_failed < 0):
            raise ValueError(
                f"storage_timeout ({self.storage_timeout}) and max_failed ({self.max_failed}) must be >= 0"
            )
        for name in ("token_dropout", "token_dropout_max"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.token_dropout and self.token_dropout_max:
            raise ValueError(
                "token_dropout (a fixed rate) and token_dropout_max (a rate per sample) exclude each other"
            )
        if self.random_cut and not PATCH <= self.random_cut <= self.max_frames:
            raise ValueError(
                f"random_cut must be 0 (off) or in {PATCH}..max_frames ({self.max_frames}) frames, got {self.random_cut}"
            )
        if not 0.0 <= self.mixup <= 1.0 or not self.mixup_alpha > 0:
            raise ValueError(f"mixup ({self.mixup}) must be in [0, 1] and mixup_alpha ({self.mixup_alpha}) > 0")

    def without_augmentation(self) -> StreamConfig:
        """These settings with every training augmentation off (SpecAugment, token dropout, random
        cuts, noise, mixup) and every sample once (uniform sampling): what validation and
        evaluation streams use."""
        return replace(
            self,
            freq_mask=0,
            time_mask=0,
            token_dropout=0.0,
            token_dropout_max=0.0,
            random_cut=0,
            noise=False,
            mixup=0.0,
            sampling="uniform",
        )

    def failures_allowed(self, samples: int) -> float:
        """Holes a pass over `samples` samples may leave (`max_failed`: a count, or a fraction)."""
        if self.max_failed is None:
            return float("inf")
        return self.max_failed if self.max_failed >= 1 else self.max_failed * samples
