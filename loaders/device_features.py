"""`DeviceFeaturizer`: a packed batch's waveforms → patches, segment ids and positions, in one
batched pass on whatever device the batch is on (CPU or GPU; no Ray).

The same numbers as the CPU path (`loaders.features.spectrogram` + `spec_augment` + `patchify`,
placed as `loaders.assemble` places them; tests/test_device_features.py holds it to them and to
`torchaudio.compliance.kaldi.fbank`), for every sample at its own resolution C in the same batch.
GPU feature extractors fix their hop when built; here every analysis frame of every sample is
gathered by index (frame j of sample i starts at `start_i + j * shift_i`), so one rfft and one mel
matmul serve a batch of mixed frame shifts, and average-pooling gathers whole C frames per sample.

The steps, each batched over all samples: waveforms (int16 → float; mixup: mixed with their
partners' in float64 by `loaders.mixup.mix_segments`; the waveform's mean removed)
→ analysis frames (gathered; DC removal, pre-emphasis, Hanning window) → power spectrum → Kaldi
mel banks → log → average-pooling → normalisation → the kept frames (padding past the clip) →
SpecAugment → noise and its roll → patches → the patches token dropout keeps → placement into
rows. What is random is drawn on the host by the keyed helpers the CPU path uses and travels with
the batch, so both paths draw alike: SpecAugment's band and span (`loaders.features.augment_spans`)
and the noise's roll in the layout, the noise itself (`loaders.noise.noise_draw`, scaled) and the
indices of the kept tokens (`loaders.dropout.keep_mask`) and the mixup weights
(`loaders.mixup.mix_lambda`) beside it (`Waveforms.noise`, `.keep`, `.mix`; the partners'
waveforms follow the samples' in `Waveforms.samples`).
Random cuts need nothing here: the loader ships the window's waveform.

The layout (`LAYOUT`, one row per sample, `layout()` builds it on the host from the plan) says
where each sample's waveform is, its frame shift and pooling, its frames, its tokens and where
they go, and its integer draws. A draw that is not an integer per sample (the noise, a mixup
weight) travels as a tensor field of `Waveforms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from loaders.batch import PATCH_VALUES, PackedBatch, Waveforms
from loaders.feature_spec import FeatureSpec
from loaders.features import LOG_FLOOR, PREEMPHASIS, analysis
from loaders.mixup import mix_segments
from loaders.tokens import FRAME_LENGTH_MS, FREQ_TOKENS, N_MELS, PATCH, frame_samples, kaldi_frames

LAYOUT = (
    "start",  # first sample of its waveform in `Waveforms.samples`
    "length",  # samples of its waveform (cut to what its kept frames read)
    "shift",  # frame shift in samples
    "pool",  # frames average-pooled into one (1: none)
    "frames",  # analysis frames computed
    "pooled",  # frames after pooling (<= kept)
    "kept",  # frames of its input (a multiple of 16; past `pooled`: padding)
    "tokens",  # tokens placed in its row (its patches, less those token dropout leaves out)
    "row",
    "offset",  # its first token in the row
    "slot",  # its segment id in the row
    "freq_start",  # SpecAugment: masked band and span (widths 0: none)
    "freq_width",
    "time_start",
    "time_width",
    "roll",  # noise: its roll in frames
    "partner_length",  # mixup: samples of its partner's waveform, after all the samples' (0: none)
)
_COLUMN = {name: i for i, name in enumerate(LAYOUT)}


def layout(
    spec: FeatureSpec,
    lengths: Sequence[int],
    scales: Sequence[float],
    tokens: Sequence[int],
    rows: Sequence[int],
    offsets: Sequence[int],
    slots: Sequence[int],
    augment: np.ndarray | None = None,
    placed: Sequence[int] | None = None,
    roll: Sequence[int] | None = None,
    partners: Sequence[int] | None = None,
) -> np.ndarray:
    """The `[S, len(LAYOUT)]` layout of samples whose waveforms (`lengths` long, already cut to
    `spec.samples_needed` or to their random window) lie end to end, at resolutions `scales`,
    `tokens` patches each (before token dropout), placed at (row, offset) with segment id `slots`;
    `augment`: `[S, 4]` SpecAugment draws (`loaders.features.augment_spans`), None for none;
    `placed`: the tokens token dropout keeps (None: all); `roll`: the noise's rolls (None: 0);
    `partners`: the lengths of the mixup partners' waveforms, which follow the samples' end to end
    (None: no partners; 0: this sample's none)."""
    lengths = np.asarray(lengths, np.int64)
    shift_ms, pool = spec.resolution(np.asarray(scales, np.float64))
    window = int(frame_samples(spec.sample_rate, FRAME_LENGTH_MS))
    kept = np.asarray(tokens, np.int64) // FREQ_TOKENS * PATCH
    frames = np.minimum(kaldi_frames(np.maximum(lengths, window), spec.sample_rate, shift_ms), kept * pool)
    columns = {
        "start": np.cumsum(lengths) - lengths,
        "length": lengths,
        "shift": frame_samples(spec.sample_rate, shift_ms),
        "pool": pool,
        "frames": frames,
        "pooled": frames // pool,
        "kept": kept,
        "tokens": tokens if placed is None else placed,
        "row": rows,
        "offset": offsets,
        "slot": slots,
        "roll": 0 if roll is None else roll,
        "partner_length": 0 if partners is None else partners,
    }
    table = np.zeros((len(lengths), len(LAYOUT)), np.int64)
    for name, values in columns.items():
        table[:, _COLUMN[name]] = values
    if augment is not None:
        table[:, _COLUMN["freq_start"] : _COLUMN["time_width"] + 1] = augment
    return table


def waveforms(
    samples: np.ndarray | torch.Tensor,
    table: np.ndarray,
    keep: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    mix: torch.Tensor | None = None,
) -> Waveforms:
    """`Waveforms` of samples end to end (then their mixup partners'), their `layout` (totals
    counted on the host), and where the recipe asks for them the kept tokens' indices, the scaled
    noise and the mixup weights (`Waveforms`)."""
    column = lambda name: table[:, _COLUMN[name]]
    return Waveforms(
        samples=torch.as_tensor(samples),
        layout=torch.from_numpy(np.array(table, np.int64)),  # a copy: arrays through Ray are read-only
        frames=int(column("frames").sum()),
        pooled=int(column("pooled").sum()),
        kept=int(column("kept").sum()),
        max_pool=int(column("pool").max(initial=1)),
        tokens=int(column("tokens").sum()),
        clip_samples=int(column("length").sum()),
        keep=keep,
        noise=noise,
        mix=mix,
    )


class DeviceFeaturizer(nn.Module):
    """The model's input from `Waveforms` on their own device, as `spec` describes it (rate,
    fbank statistics, compression, recipe). `featurize(batch)` fills a `PackedBatch` whose `audio`
    awaits it; `forward` is the computation. The window and mel matrix follow the module's device
    (`.to(device)`), and move to the batch's device if they are elsewhere."""

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec
        self.window_size = int(frame_samples(spec.sample_rate, FRAME_LENGTH_MS))
        window, banks, self.fft_size = analysis(spec.sample_rate, self.window_size)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("banks", banks, persistent=False)
        self.pad_value = -spec.mean / (2 * spec.std) if spec.recipe == "paper" else 0.0

    def featurize(self, batch: PackedBatch) -> PackedBatch:
        """`batch` with its patches, segment ids and positions computed from its `audio` on the
        audio's device (a batch already featurized comes back as it is)."""
        if batch.featurized:
            return batch
        rows, length, _ = batch.patches.shape
        patches, segment_ids, freq_pos, time_pos = self(batch.audio, rows, length)
        return replace(
            batch, patches=patches, segment_ids=segment_ids, freq_pos=freq_pos, time_pos=time_pos, audio=None
        )

    def packed(
        self,
        waves: Sequence[np.ndarray],
        row: np.ndarray,
        offset: np.ndarray,
        scale: np.ndarray,
        tokens: np.ndarray,
        keys: Sequence[str],
        device: torch.device | str = "cpu",
    ) -> PackedBatch:
        """A featurized `PackedBatch` (on `device`) of waveforms (float or int16, each cut to
        `spec.samples_needed`) placed at (row, offset) with `tokens` each, as many rows and as long
        as they need: what `loaders.batch.from_features` makes of ready features (e.g. inference)."""
        order = np.lexsort((offset, row))
        row, offset, tokens = row[order], offset[order], tokens[order]
        slot = np.ones(len(order), np.int64)
        for i in range(1, len(order)):
            slot[i] = slot[i - 1] + 1 if row[i] == row[i - 1] else 1
        waves = [waves[i] for i in order]
        table = layout(self.spec, [len(w) for w in waves], scale[order], tokens, row, offset, slot)
        audio = waveforms(torch.as_tensor(np.concatenate(waves)), table).to(device)
        patches, segment_ids, freq_pos, time_pos = self(audio, int(row.max()) + 1, int((offset + tokens).max()))
        return PackedBatch(
            patches=patches,
            segment_ids=segment_ids,
            freq_pos=freq_pos,
            time_pos=time_pos,
            labels=torch.zeros(len(order), dtype=torch.int64),
            row=torch.from_numpy(row.astype(np.int64)),
            slot=torch.from_numpy(slot),
            n_tokens=torch.from_numpy(tokens.astype(np.int64)),
            scale=torch.as_tensor(scale[order], dtype=torch.float32),
            keys=[keys[i] for i in order],
        ).to(device)

    def forward(self, audio: Waveforms, rows: int, length: int) -> tuple[torch.Tensor, ...]:
        """(patches `[rows, length, 256]`, segment ids, frequency and time positions `[rows, length]`)."""
        device = audio.samples.device
        if self.window.device != device:
            self.to(device)
        table = audio.layout
        column = {name: table[:, i] for i, name in enumerate(LAYOUT)}
        if not audio.kept:
            return _placed(torch.zeros(0, PATCH_VALUES, device=device), None, column, rows, length, 0)
        wave = audio.samples
        wave = wave.float() / 32768.0 if wave.dtype == torch.int16 else wave.float()
        if audio.mix is not None:
            owner, at = _owners(column["length"], audio.clip_samples)
            wave = mix_segments(wave.double(), owner, at, column["length"], column["partner_length"], audio.mix).float()
        spec = self._log_mel(self._analysis_frames(wave, column, audio))
        spec = _pooled(spec, column, audio)
        spec = self._kept_frames((spec - self.spec.mean) / (2 * self.spec.std), column, audio)
        spec = _spec_augmented(spec, column, audio.kept)
        if audio.noise is not None:
            spec = _rolled(spec + audio.noise, column, audio.kept)
        tokens, index = _kept_tokens(_patches(spec), column, audio)
        return _placed(tokens, index, column, rows, length, audio.tokens)

    def _analysis_frames(self, wave: torch.Tensor, column: dict[str, torch.Tensor], audio: Waveforms) -> torch.Tensor:
        """`[frames, window]`: each sample's frames of its (float, mixed) waveform `wave` gathered at
        its own shift, its waveform's mean removed (the end of a clip shorter than a window: zeros,
        as the CPU path pads it)."""
        length = column["length"]
        sums = torch.segment_reduce(wave, "sum", lengths=length, unsafe=True) if wave.numel() else length * 0.0
        means = sums / length.clamp_min(self.window_size)
        owner, frame = _owners(column["frames"], audio.frames)
        offset = frame * column["shift"][owner]  # of each frame in its clip
        windows = torch.nn.functional.pad(wave, (0, self.window_size)).unfold(0, self.window_size, 1)  # a view
        values = windows[column["start"][owner] + offset]
        inside = torch.arange(self.window_size, device=wave.device) < (length[owner] - offset).unsqueeze(1)
        return torch.where(inside, values, 0.0) - means[owner].unsqueeze(1)

    def _log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        """Kaldi's steps after framing, as `loaders.features.fbank` takes them."""
        frames = frames - frames.mean(dim=1, keepdim=True)
        frames = torch.cat([frames[:, :1] * (1 - PREEMPHASIS), frames[:, 1:] - PREEMPHASIS * frames[:, :-1]], dim=1)
        spectrum = torch.fft.rfft(frames * self.window, n=self.fft_size)
        power = spectrum.real.square() + spectrum.imag.square()
        return (power @ self.banks).clamp_min(LOG_FLOOR).log()

    def _kept_frames(self, spec: torch.Tensor, column: dict[str, torch.Tensor], audio: Waveforms) -> torch.Tensor:
        """`[kept, 128]`: each sample's pooled frames, then its padding up to its kept frames."""
        owner, frame = _owners(column["pooled"], audio.pooled)
        first = torch.cumsum(column["kept"], 0) - column["kept"]
        kept = torch.full((audio.kept, N_MELS), self.pad_value, device=spec.device)
        kept[first[owner] + frame] = spec
        return kept


def to_device(
    batch: PackedBatch, device: torch.device | str, featurizer: DeviceFeaturizer | None = None
) -> PackedBatch:
    """`batch` on `device` (copied without waiting), featurized there if it came as waveforms;
    `featurizer`: the stream's (`PackedStream.featurizer`)."""
    batch = batch.to(device, non_blocking=True)
    if batch.featurized:
        return batch
    if featurizer is None:
        raise ValueError(
            "the batch holds waveforms (featurize='device'): pass the stream's featurizer "
            "(PackedStream.featurizer) to featurize it on the trainer's device"
        )
    return featurizer.featurize(batch)


def _owners(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For `total` items, `counts[i]` of them sample i's: each item's sample and its index within it."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(total, device=counts.device) - first[owner]


def _pooled(spec: torch.Tensor, column: dict[str, torch.Tensor], audio: Waveforms) -> torch.Tensor:
    """Average-pooling of each sample's frames by its own factor (none where all are 1)."""
    if audio.max_pool == 1:
        return spec
    owner, frame = _owners(column["pooled"], audio.pooled)
    first = torch.cumsum(column["frames"], 0) - column["frames"]
    pool = column["pool"][owner]
    members = torch.arange(audio.max_pool, device=spec.device)
    index = (first[owner] + frame * pool).unsqueeze(1) + members
    taken = members < pool.unsqueeze(1)
    gathered = spec[index.clamp_max(spec.shape[0] - 1)] * taken.unsqueeze(2)
    return gathered.sum(dim=1) / pool.unsqueeze(1)


def _spec_augmented(spec: torch.Tensor, column: dict[str, torch.Tensor], kept: int) -> torch.Tensor:
    """Each sample's SpecAugment band and span (drawn on the host) set to 0."""
    owner, frame = _owners(column["kept"], kept)
    freq_start, freq_width, time_start, time_width = (
        column[name][owner] for name in ("freq_start", "freq_width", "time_start", "time_width")
    )
    bins = torch.arange(N_MELS, device=spec.device)
    band = (bins >= freq_start.unsqueeze(1)) & (bins < (freq_start + freq_width).unsqueeze(1))
    span = (frame >= time_start) & (frame < time_start + time_width)
    return spec.masked_fill(band | span.unsqueeze(1), 0.0)


def _rolled(spec: torch.Tensor, column: dict[str, torch.Tensor], kept: int) -> torch.Tensor:
    """Each sample's frames rolled in time by its own shift (as `torch.roll` rolls one sample)."""
    owner, frame = _owners(column["kept"], kept)
    first = torch.arange(kept, device=spec.device) - frame
    return spec[first + (frame - column["roll"][owner]) % column["kept"][owner]]


def _patches(spec: torch.Tensor) -> torch.Tensor:
    """`[kept, 128]` → tokens `[kept / 2, 256]` laid out as `loaders.features.patchify` lays them
    out (every sample's frames are whole 16-frame blocks, so one reshape serves all)."""
    blocks = spec.reshape(-1, PATCH, FREQ_TOKENS, PATCH)  # [time step, frame, band, bin]
    return blocks.permute(0, 2, 3, 1).reshape(-1, PATCH_VALUES)


def _kept_tokens(
    patches: torch.Tensor, column: dict[str, torch.Tensor], audio: Waveforms
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the tokens placed in the rows, sample by sample; each one's index among its sample's
    patches, None where token dropout keeps them all)."""
    if audio.keep is None:
        return patches, None
    owner, _ = _owners(column["tokens"], audio.tokens)
    each = column["kept"] // PATCH * FREQ_TOKENS
    return patches[(torch.cumsum(each, 0) - each)[owner] + audio.keep], audio.keep


def _placed(
    tokens: torch.Tensor,
    index: torch.Tensor | None,
    column: dict[str, torch.Tensor],
    rows: int,
    length: int,
    total: int,
) -> tuple[torch.Tensor, ...]:
    """`total` tokens into their rows: patches, segment ids (the slot; 0 padding) and positions
    (of each token's `index` among its sample's patches; None: its place in the row)."""
    device = tokens.device
    owner, token = _owners(column["tokens"], total)
    index = token if index is None else index
    where = column["row"][owner] * length + column["offset"][owner] + token
    patches = torch.zeros(rows * length, PATCH_VALUES, device=device)
    segment_ids = torch.zeros(rows * length, dtype=torch.int32, device=device)
    freq_pos = torch.zeros(rows * length, dtype=torch.int64, device=device)
    time_pos = torch.zeros(rows * length, dtype=torch.int64, device=device)
    patches[where] = tokens
    segment_ids[where] = column["slot"][owner].int()
    freq_pos[where] = index % FREQ_TOKENS
    time_pos[where] = index // FREQ_TOKENS
    shape = (rows, length)
    return patches.view(*shape, PATCH_VALUES), segment_ids.view(shape), freq_pos.view(shape), time_pos.view(shape)
