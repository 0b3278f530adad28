"""Planned batch → arrays: read each sample by its byte offset, featurize, place it in its row.

The one function both backends run (`local` in-process, `ray` in Ray Data tasks), on local
disk or object storage alike. A batch's samples come from a few neighbouring shards; their
byte ranges (each member's tar header with its bytes) are read as one request per contiguous run
of members (`shards.ranged`), concurrently on object stores, and the requests and retries are
counted in the batch. The header must name the key and the XXH3-64 of the bytes must match the
index. Only the audio the features keep is decoded. A sample that cannot be read, decoded or
verified leaves its planned place as padding: the batch keeps its shape and its other samples,
and the failure is reported by shard and key.
"""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from loaders.batch import DRAWS, PATCH_VALUES, PackedBatch
from loaders.config import StreamConfig
from loaders.cuts import window_samples
from loaders.device_features import layout, waveforms
from loaders.dropout import keep_mask
from loaders.feature_spec import FeatureSpec
from loaders.features import augment_spans, masked, patchify, token_positions
from loaders.index import StreamIndex
from loaders.noise import add_noise, noise_draw
from loaders.plan import EpochPlan
from loaders.tokens import FREQ_TOKENS, N_MELS, PATCH
from shards.audio import PCM16_HEADER_BYTES, pcm16_float, pcm16_header, pcm16_samples
from shards.location import Location
from shards.ranged import ReadStats, read_spans
from shards.retry import RetryPolicy
from shards.tar import Member, check_read, member_problem, member_span

_SALT_AUGMENT = 0xA6


@dataclass(frozen=True)
class FeatureConfig:
    """What a worker needs besides the batch spec: the stream's settings, where the split is and
    how its audio becomes features (picklable, no Ray)."""

    stream: StreamConfig
    split_dir: str  # a path or URL (shards.location)
    num_classes: int
    spec: FeatureSpec
    more_split_dirs: tuple[str, ...] = ()  # a mix's further sources, 1, 2, ... (source 0 is split_dir)

    def __post_init__(self):  # the stream's compression and frame cap are the ones its features use
        stream = self.stream
        object.__setattr__(
            self, "spec", replace(self.spec, compression=stream.compression, max_frames=stream.max_frames)
        )

    def source_dir(self, source: int) -> Location:
        return Location.of(self.split_dir if source == 0 else self.more_split_dirs[source - 1])


@dataclass(frozen=True)
class SampleSpec:
    """One planned sample: where its bytes are, what it is, and where it goes in the batch."""

    key: str
    shard: str
    offset: int  # of its wav bytes in the shard
    nbytes: int
    num_samples: int
    label_ids: tuple[int, ...]
    row: int
    start: int  # its first token in the row
    tokens: int
    cut: int
    scale: float
    xxh3_64: int | None = None  # of its wav bytes; None for shard sets made before checksums
    source: int = 0  # its source in a mix (`FeatureConfig.source_dir`)
    dropped: int = 0  # tokens token dropout leaves out (`tokens` are the kept ones)
    window_start: int = 0  # first frame of its random window (`loaders.cuts`)


@dataclass(frozen=True)
class BatchSpec:
    """The work item of one batch, from the plan to a worker; `is_padding`: an all-padding filler."""

    epoch: int
    step: int
    is_padding: bool = False
    samples: tuple[SampleSpec, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BatchSpec:
        values = json.loads(text)
        samples = tuple(SampleSpec(**(s | {"label_ids": tuple(s["label_ids"])})) for s in values.pop("samples"))
        return cls(**values, samples=samples)


def batch_spec(plan: EpochPlan, index: StreamIndex, batch: int | None, step: int) -> BatchSpec:
    """The work item of one planned batch; `batch=None` is an all-padding filler."""
    if batch is None:
        return BatchSpec(plan.epoch, step, is_padding=True)
    planned = slice(plan.batch_starts[batch], plan.batch_starts[batch + 1])
    positions = plan.sample[planned]
    checksums = [None] * len(positions) if index.xxh3_64 is None else index.xxh3_64[positions].tolist()
    columns = zip(
        positions.tolist(),
        index.keys.take(positions).to_pylist(),
        index.shard[positions].tolist(),
        index.offset[positions].tolist(),
        index.nbytes[positions].tolist(),
        index.num_samples[positions].tolist(),
        plan.row[planned].tolist(),
        plan.offset[planned].tolist(),
        plan.tokens[planned].tolist(),
        plan.cut[planned].tolist(),
        plan.scale[planned].tolist(),
        checksums,
        plan.dropped[planned].tolist(),
        plan.window_start[planned].tolist(),
    )
    samples = tuple(
        SampleSpec(
            key=key,
            shard=index.shard_names[shard],
            offset=offset,
            nbytes=nbytes,
            num_samples=num_samples,
            label_ids=index.label_ids(position),
            row=row,
            start=start,
            tokens=tokens,
            cut=cut,
            scale=scale,
            xxh3_64=checksum,
            source=index.source_of(position),
            dropped=dropped,
            window_start=window_start,
        )
        for (
            position,
            key,
            shard,
            offset,
            nbytes,
            num_samples,
            row,
            start,
            tokens,
            cut,
            scale,
            checksum,
            dropped,
            window_start,
        ) in columns
    )
    return BatchSpec(plan.epoch, step, samples=samples)


Reads = tuple[dict[tuple[int, str], np.ndarray], list[dict], ReadStats]  # what `read_audio` returns


def assemble(spec: BatchSpec, config: FeatureConfig, reads: Reads | None = None) -> dict:
    """Arrays of one batch: patches, segment ids, positions, and per-sample metadata as JSON
    (`reads`: the batch's `read_audio`, if already made, e.g. by a reader running ahead). With
    `featurize="device"`: no patch values (`[rows, length, 0]`) but the samples' int16 waveforms
    end to end (`waves`) and their `loaders.device_features.layout`."""
    rows, length = config.stream.rows_per_batch, config.stream.max_tokens
    on_device = config.stream.featurize == "device"
    patches = np.zeros((rows, length, 0 if on_device else PATCH_VALUES), np.float32)
    segment_ids = np.zeros((rows, length), np.int32)
    freq_pos = np.zeros((rows, length), np.int32)
    time_pos = np.zeros((rows, length), np.int32)
    audio, failed, reads = reads if reads is not None else read_audio(spec.samples, config)
    placed, slots, waves, keeps = [], defaultdict(int), [], []
    for sample in spec.samples:
        if (sample.source, sample.key) not in audio:
            continue
        waveform = audio[sample.source, sample.key]
        if on_device:
            patches_in = sample.tokens + sample.dropped
            keep = keep_mask(patches_in, sample.tokens, config.stream.seed, spec.epoch, sample.key)
            freqs, times = (positions[keep] for positions in token_positions(patches_in // FREQ_TOKENS))
            waves.append(waveform)
            keeps.append(keep)
        else:
            tokens, freqs, times = featurize(waveform, sample, spec.epoch, config)
            if tokens.shape[0] != sample.tokens:
                failed.append(_failure(sample, f"{tokens.shape[0]} tokens where the plan has {sample.tokens}"))
                continue
            patches[sample.row, sample.start : sample.start + sample.tokens] = tokens.numpy()
        r, start, end = sample.row, sample.start, sample.start + sample.tokens
        slots[r] += 1
        segment_ids[r, start:end] = slots[r]
        freq_pos[r, start:end] = freqs.numpy()
        time_pos[r, start:end] = times.numpy()
        placed.append(
            {
                "key": sample.key,
                "source": sample.source,
                "label_ids": sample.label_ids,
                "row": r,
                "slot": slots[r],
                "tokens": sample.tokens,
                "dropped": sample.dropped,
                "scale": sample.scale,
                "start": start,
            }
        )
    meta = {
        "epoch": spec.epoch,
        "step": spec.step,
        "is_padding": spec.is_padding,
        "samples": placed,
        "failed": failed,
        "cut_tokens": sum(s.cut for s in spec.samples),
        "requests": reads.requests,
        "retries": reads.retries,
    }
    arrays = {
        "patches": patches,
        "segment_ids": segment_ids,
        "freq_pos": freq_pos,
        "time_pos": time_pos,
        "meta": json.dumps(meta),
    }
    if on_device:
        arrays["waves"] = np.concatenate(waves) if waves else np.zeros(0, np.int16)
        arrays |= device_layout(placed, [len(w) for w in waves], keeps, spec.epoch, config)
    return arrays


def device_layout(
    placed: list[dict], lengths: list[int], keeps: list[torch.Tensor], epoch: int, config: FeatureConfig
) -> dict[str, np.ndarray]:
    """The arrays that make a batch's placed samples on the device: their
    `loaders.device_features.layout` ("layout"), and as the recipe asks the indices of the patches
    token dropout keeps (`keeps`: each sample's `keep_mask`) end to end ("keep") and the scaled
    noise ("noise"). Each keyed draw is the CPU path's, by the same helper; a new one (a mixup
    partner and weight, say) is drawn here and travels as a `LAYOUT` column (integers) or as an
    array named in `loaders.batch.DRAWS` (a `Waveforms` field)."""
    stream = config.stream
    column = lambda name: [s[name] for s in placed]
    patches_in = [s["tokens"] + s["dropped"] for s in placed]
    frames = [n // FREQ_TOKENS * PATCH for n in patches_in]
    augment = np.array([augment_draw(s["key"], n, epoch, stream) for s, n in zip(placed, frames)])
    noise = (
        [noise_draw((n, N_MELS), stream.seed, epoch, s["key"]) for s, n in zip(placed, frames)] if stream.noise else []
    )
    table = layout(
        config.spec,
        lengths,
        column("scale"),
        patches_in,
        column("row"),
        column("start"),
        column("slot"),
        augment.reshape(len(placed), 4),
        placed=column("tokens"),
        roll=[shift for _, shift in noise] or None,
    )
    arrays = {"layout": table}
    if stream.token_dropout or stream.token_dropout_max:
        arrays["keep"] = np.concatenate([np.flatnonzero(k.numpy()) for k in keeps] + [np.zeros(0, np.int64)])
    if stream.noise:
        arrays["noise"] = torch.cat([n for n, _ in noise] + [torch.zeros(0, N_MELS)]).numpy()
    return arrays


def read_audio(samples: Sequence[SampleSpec], config: FeatureConfig) -> Reads:
    """Waveforms by key (cut to the samples their features need), read as one ranged request per
    contiguous run of members in each shard (retried for up to the stream's `storage_timeout` when
    the store fails transiently) and verified; holes named by shard and key; what the reads cost.
    A read the storage cannot serve raises `StorageFailure`."""
    members = [Member(s.offset, s.nbytes, s.xxh3_64) for s in samples]
    policy = RetryPolicy(timeout_s=config.stream.storage_timeout)
    spans = [member_span(config.source_dir(s.source) / s.shard, m) for s, m in zip(samples, members)]
    data, stats = read_spans(spans, policy)
    audio, failed = {}, []
    for sample, member, read in zip(samples, members, data):
        check_read(config.source_dir(sample.source) / sample.shard, read)
        problem = member_problem(read, sample.key, member)
        if problem is None:
            wav = memoryview(read)[tarfile.BLOCKSIZE :]
            problem, audio[sample.source, sample.key] = _kept_audio(wav, sample, config)
        if problem:
            audio.pop((sample.source, sample.key), None)
            failed.append(_failure(sample, problem))
    return audio, failed, stats


def _kept_audio(wav: memoryview, sample: SampleSpec, config: FeatureConfig) -> tuple[str | None, np.ndarray | None]:
    """(problem, the samples of a verified member that its features use: the first ones, or its
    random window's)."""
    try:
        stored, _ = pcm16_header(bytes(wav[:PCM16_HEADER_BYTES]))
    except ValueError as exc:
        return f"undecodable audio: {exc}", None
    if stored != sample.num_samples:
        return f"{stored} samples where the index has {sample.num_samples}", None
    first, keep = 0, config.spec.samples_needed(sample.num_samples, sample.scale, capacity=config.stream.max_tokens)
    if config.stream.random_cut:
        shift, pool = config.spec.resolution(sample.scale)
        frames = (sample.tokens + sample.dropped) // FREQ_TOKENS * PATCH
        first, keep = window_samples(sample.window_start, frames, config.spec.sample_rate, float(shift), int(pool))
    begin = PCM16_HEADER_BYTES + 2 * first
    return None, pcm16_samples(bytes(wav[begin : begin + 2 * keep]))


def featurize(
    waveform: np.ndarray, sample: SampleSpec, epoch: int, config: FeatureConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised spectrogram at the sample's scale (of its window's audio), optionally masked and
    noised, as patches + positions: the patches token dropout keeps, with their own positions."""
    stream = config.stream
    spec = config.spec.spectrogram(pcm16_float(waveform), sample.scale, capacity=stream.max_tokens)
    if stream.freq_mask or stream.time_mask:
        spec = masked(spec, augment_draw(sample.key, spec.shape[0], epoch, stream))
    if stream.noise:
        spec = add_noise(spec, stream.seed, epoch, sample.key)
    patches, freqs, times = patchify(spec)
    if sample.dropped:
        keep = keep_mask(len(patches), len(patches) - sample.dropped, stream.seed, epoch, sample.key)
        patches, freqs, times = patches[keep], freqs[keep], times[keep]
    return patches, freqs, times


def augment_draw(key: str, frames: int, epoch: int, stream: StreamConfig) -> tuple[int, int, int, int]:
    """SpecAugment's draw (`augment_spans`) for the sample `key` of `frames` frames, keyed by the
    seed, the epoch and the key; zeros where masking is off."""
    if not (stream.freq_mask or stream.time_mask):
        return 0, 0, 0, 0
    rng = np.random.default_rng([stream.seed, epoch, _SALT_AUGMENT, *key.encode()])
    return augment_spans(rng, (frames, N_MELS), stream.freq_mask, stream.time_mask)


def to_batch(arrays: dict, config: FeatureConfig) -> PackedBatch:
    """Arrays from `assemble` (in-process or through Ray) → `PackedBatch` of torch tensors."""
    meta = json.loads(str(arrays["meta"]))
    samples = meta["samples"]
    if config.spec.multi_label:
        labels = torch.zeros(len(samples), config.num_classes)
        for i, s in enumerate(samples):
            labels[i, s["label_ids"]] = 1.0
    else:
        labels = torch.tensor([s["label_ids"][0] for s in samples], dtype=torch.int64)
    column = lambda name, dtype: torch.tensor([s[name] for s in samples], dtype=dtype)
    audio = None
    if "waves" in arrays:
        drawn = {name: _tensor(arrays[name]) for name in DRAWS if name in arrays}
        audio = waveforms(_tensor(arrays["waves"]), np.asarray(arrays["layout"]), **drawn)
    return PackedBatch(
        patches=_tensor(arrays["patches"]),
        segment_ids=_tensor(arrays["segment_ids"]),
        freq_pos=_tensor(arrays["freq_pos"]).long(),
        time_pos=_tensor(arrays["time_pos"]).long(),
        labels=labels,
        row=column("row", torch.int64),
        slot=column("slot", torch.int64),
        n_tokens=column("tokens", torch.int64),
        scale=column("scale", torch.float32),
        keys=[s["key"] for s in samples],
        sources=[s["source"] for s in samples] if config.more_split_dirs else [],
        epoch=meta["epoch"],
        step=meta["step"],
        is_padding=meta["is_padding"],
        failed=meta["failed"],
        cut_tokens=meta["cut_tokens"],
        requests=meta["requests"],
        retries=meta["retries"],
        audio=audio,
    )


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Arrays that came through Ray are read-only; torch wants to own writable memory."""
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _failure(sample: SampleSpec, reason: str) -> dict:
    return {"key": sample.key, "shard": sample.shard, "reason": reason}
