"""Planned batch → arrays: read each sample by its byte offset, featurize, place it in its row.

The one function both backends run (`local` in-process, `ray` in Ray Data tasks). A batch's
samples are read sorted by (shard, offset), so reads move forward through a few neighbouring
shards. Each read takes the member's tar header with its bytes in one request: the header must
name the key and the XXH3-64 of the bytes must match the index. Only the audio the features keep
is decoded (the rest is only checksummed, in chunks). A sample that cannot be read, decoded or
verified leaves its planned place as padding: the batch keeps its shape and its other samples,
and the failure is reported by shard and key.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from loaders.batch import PATCH_VALUES, PackedBatch
from loaders.config import StreamConfig
from loaders.features import patchify, samples_needed, spec_augment, spectrogram
from loaders.index import StreamIndex
from loaders.plan import EpochPlan
from shards.audio import PCM16_HEADER_BYTES, pcm16_header, pcm16_samples
from shards.checksum import checksum_chunks, checksum_problem, read_chunks
from shards.tar import Member, header_problem, span_problem

_SALT_AUGMENT = 0xA6


@dataclass(frozen=True)
class FeatureConfig:
    """What a worker needs besides the batch spec: the stream's settings and the shard set's
    facts (picklable, no Ray)."""

    stream: StreamConfig
    split_dir: str
    sample_rate: int
    num_classes: int
    multi_label: bool
    mean: float
    std: float


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
        )
        for position, key, shard, offset, nbytes, num_samples, row, start, tokens, cut, scale, checksum in columns
    )
    return BatchSpec(plan.epoch, step, samples=samples)


def assemble(spec: BatchSpec, config: FeatureConfig) -> dict:
    """Arrays of one batch: patches, segment ids, positions, and per-sample metadata as JSON."""
    rows, length = config.stream.rows_per_batch, config.stream.max_tokens
    patches = np.zeros((rows, length, PATCH_VALUES), np.float32)
    segment_ids = np.zeros((rows, length), np.int32)
    freq_pos = np.zeros((rows, length), np.int32)
    time_pos = np.zeros((rows, length), np.int32)
    audio, failed = read_audio(spec.samples, config)
    placed, slots = [], defaultdict(int)
    for sample in spec.samples:
        if sample.key not in audio:
            continue
        tokens, freqs, times = featurize(audio[sample.key], sample, spec.epoch, config)
        if tokens.shape[0] != sample.tokens:
            failed.append(_failure(sample, f"{tokens.shape[0]} tokens where the plan has {sample.tokens}"))
            continue
        r, start, end = sample.row, sample.start, sample.start + sample.tokens
        slots[r] += 1
        patches[r, start:end] = tokens.numpy()
        segment_ids[r, start:end] = slots[r]
        freq_pos[r, start:end] = freqs.numpy()
        time_pos[r, start:end] = times.numpy()
        placed.append(
            {
                "key": sample.key,
                "label_ids": sample.label_ids,
                "row": r,
                "slot": slots[r],
                "tokens": sample.tokens,
                "scale": sample.scale,
            }
        )
    meta = {
        "epoch": spec.epoch,
        "step": spec.step,
        "is_padding": spec.is_padding,
        "samples": placed,
        "failed": failed,
        "cut_tokens": sum(s.cut for s in spec.samples),
    }
    return {
        "patches": patches,
        "segment_ids": segment_ids,
        "freq_pos": freq_pos,
        "time_pos": time_pos,
        "meta": json.dumps(meta),
    }


def read_audio(samples: Sequence[SampleSpec], config: FeatureConfig) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Waveforms by key (cut to the samples their features need), read shard by shard in offset
    order and verified; failures named by shard and key."""
    audio, failed = {}, []
    by_shard: dict[str, list[SampleSpec]] = defaultdict(list)
    for sample in samples:
        by_shard[sample.shard].append(sample)
    for shard, members in sorted(by_shard.items()):
        try:
            handle = open(Path(config.split_dir) / shard, "rb")
        except OSError as exc:
            failed += [_failure(s, f"shard unreadable: {exc}") for s in members]
            continue
        with handle:
            size = os.fstat(handle.fileno()).st_size
            for sample in sorted(members, key=lambda s: s.offset):
                stream = config.stream
                keep = samples_needed(
                    sample.num_samples,
                    config.sample_rate,
                    sample.scale,
                    compression=stream.compression,
                    max_frames=stream.max_frames,
                    capacity=stream.max_tokens,
                )
                try:
                    audio[sample.key] = _read_member(handle, size, sample, keep)
                except ValueError as exc:  # a bad member costs only its own sample
                    failed.append(_failure(sample, str(exc)))
    return audio, failed


def _read_member(handle, shard_bytes: int, sample: SampleSpec, keep: int) -> np.ndarray:
    """The first `keep` samples of one member, after checking its place, tar header and XXH3-64 (the bytes
    past the kept audio are read in chunks, only to checksum them)."""
    problem = span_problem(Member(sample.offset, sample.nbytes, sample.xxh3_64), shard_bytes)
    if problem:
        raise ValueError(problem)
    handle.seek(sample.offset - tarfile.BLOCKSIZE)
    data = handle.read(tarfile.BLOCKSIZE + min(PCM16_HEADER_BYTES + 2 * keep, sample.nbytes))
    problem = header_problem(data[: tarfile.BLOCKSIZE], sample.key, sample.nbytes)
    if problem:
        raise ValueError(problem)
    wav = data[tarfile.BLOCKSIZE :]
    if sample.xxh3_64 is not None:
        rest = read_chunks(handle, sample.nbytes - len(wav))
        problem = checksum_problem(checksum_chunks(chain([wav], rest)), sample.xxh3_64)
        if problem:
            raise ValueError(problem)
    try:
        stored, _ = pcm16_header(wav)
    except ValueError as exc:
        raise ValueError(f"undecodable audio: {exc}") from None
    if stored != sample.num_samples:
        raise ValueError(f"{stored} samples where the index has {sample.num_samples}")
    return pcm16_samples(wav[PCM16_HEADER_BYTES : PCM16_HEADER_BYTES + 2 * keep])


def featurize(
    waveform: np.ndarray, sample: SampleSpec, epoch: int, config: FeatureConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised spectrogram at the sample's scale, optionally masked, as patches + positions."""
    stream = config.stream
    spec = spectrogram(
        waveform,
        config.sample_rate,
        sample.scale,
        compression=stream.compression,
        mean=config.mean,
        std=config.std,
        max_frames=stream.max_frames,
        capacity=stream.max_tokens,
    )
    if stream.freq_mask or stream.time_mask:
        rng = np.random.default_rng([stream.seed, epoch, _SALT_AUGMENT, *sample.key.encode()])
        spec = spec_augment(spec, rng, stream.freq_mask, stream.time_mask)
    return patchify(spec)


def to_batch(arrays: dict, config: FeatureConfig) -> PackedBatch:
    """Arrays from `assemble` (in-process or through Ray) → `PackedBatch` of torch tensors."""
    meta = json.loads(str(arrays["meta"]))
    samples = meta["samples"]
    if config.multi_label:
        labels = torch.zeros(len(samples), config.num_classes)
        for i, s in enumerate(samples):
            labels[i, s["label_ids"]] = 1.0
    else:
        labels = torch.tensor([s["label_ids"][0] for s in samples], dtype=torch.int64)
    column = lambda name, dtype: torch.tensor([s[name] for s in samples], dtype=dtype)
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
        epoch=meta["epoch"],
        step=meta["step"],
        is_padding=meta["is_padding"],
        failed=meta["failed"],
        cut_tokens=meta["cut_tokens"],
    )


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Arrays that came through Ray are read-only; torch wants to own writable memory."""
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _failure(sample: SampleSpec, reason: str) -> dict:
    return {"key": sample.key, "shard": sample.shard, "reason": reason}
