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
from loaders.keyed import keyed_rng
from loaders.mixup import mix_lambda, mix_waves, soft_targets
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
    draw: int = -1  # balanced sampling: its draw index in the epoch (-1: uniform sampling)
    partner: SampleSpec | None = None  # mixup: the sample mixed into it (read at its scale, not placed)

    @property
    def ident(self) -> str:
        """What keys its random choices in the featurizer (`sample_ident`)."""
        return sample_ident(self.key, self.draw)

    @classmethod
    def from_dict(cls, values: dict) -> SampleSpec:
        partner = values.get("partner")
        return cls(
            **values | {"label_ids": tuple(values["label_ids"]), "partner": cls.from_dict(partner) if partner else None}
        )


def sample_ident(key: str, draw: int) -> str:
    """A sample's identity for its keyed draws: its key, or under balanced sampling its draw (the
    same key may be drawn twice in an epoch)."""
    return key if draw < 0 else f"draw {draw}"


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
        return cls(**values | {"samples": tuple(SampleSpec.from_dict(s) for s in values["samples"])})

    @property
    def reads(self) -> tuple[SampleSpec, ...]:
        """What the batch reads: its samples, then their mixup partners (`read_audio` positions)."""
        return self.samples + tuple(s.partner for s in self.samples if s.partner is not None)


def batch_spec(plan: EpochPlan, index: StreamIndex, batch: int | None, step: int) -> BatchSpec:
    """The work item of one planned batch; `batch=None` is an all-padding filler."""
    if batch is None:
        return BatchSpec(plan.epoch, step, is_padding=True)
    planned = slice(plan.batch_starts[batch], plan.batch_starts[batch + 1])
    positions = plan.sample[planned]
    checksums = [None] * len(positions) if index.xxh3_64 is None else index.xxh3_64[positions].tolist()
    unset = [-1] * len(positions)
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
        unset if plan.draw is None else plan.draw[planned].tolist(),
        unset if plan.partner is None else plan.partner[planned].tolist(),
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
            draw=draw,
            partner=_partner_spec(index, partner, scale) if partner >= 0 else None,
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
            draw,
            partner,
        ) in columns
    )
    return BatchSpec(plan.epoch, step, samples=samples)


def _partner_spec(index: StreamIndex, position: int, scale: float) -> SampleSpec:
    """A mixup partner: where its bytes are and its labels; read at its sample's scale, so that it
    keeps at least as much audio as the sample does (or all of its own)."""
    return SampleSpec(
        key=index.keys[position].as_py(),
        shard=index.shard_names[index.shard[position]],
        offset=int(index.offset[position]),
        nbytes=int(index.nbytes[position]),
        num_samples=int(index.num_samples[position]),
        label_ids=index.label_ids(position),
        row=-1,
        start=0,
        tokens=0,
        cut=0,
        scale=scale,
        xxh3_64=None if index.xxh3_64 is None else int(index.xxh3_64[position]),
        source=index.source_of(position),
    )


Reads = tuple[dict[int, np.ndarray], list[dict], ReadStats]  # what `read_audio` returns


def assemble(spec: BatchSpec, config: FeatureConfig, reads: Reads | None = None) -> dict:
    """Arrays of one batch: patches, segment ids, positions, and per-sample metadata as JSON
    (`reads`: the batch's `read_audio`, if already made, e.g. by a reader running ahead). With
    `featurize="device"`: no patch values (`[rows, length, 0]`) but the samples' int16 waveforms
    end to end (`waves`) and their `loaders.device_features.layout`."""
    stream = config.stream
    rows, length = stream.rows_per_batch, stream.max_tokens
    on_device = stream.featurize == "device"
    patches = np.zeros((rows, length, 0 if on_device else PATCH_VALUES), np.float32)
    segment_ids = np.zeros((rows, length), np.int32)
    freq_pos = np.zeros((rows, length), np.int32)
    time_pos = np.zeros((rows, length), np.int32)
    audio, failed, reads = reads if reads is not None else read_audio(spec.reads, config)
    _name_lost_partners(spec, audio, failed)
    placed, slots, waves, partner_waves, keeps = [], defaultdict(int), [], [], []
    partners = iter(range(len(spec.samples), len(spec.reads)))  # read positions of the partners, in order
    for i, sample in enumerate(spec.samples):
        partner = audio.get(next(partners)) if sample.partner is not None else None  # None: none, or lost
        if i not in audio:
            continue
        lam = 1.0 if partner is None else mix_lambda(stream.seed, spec.epoch, sample.ident, stream.mixup_alpha)
        if on_device:
            patches_in = sample.tokens + sample.dropped
            keep = keep_mask(patches_in, sample.tokens, stream.seed, spec.epoch, sample.ident)
            freqs, times = (positions[keep] for positions in token_positions(patches_in // FREQ_TOKENS))
            waves.append(audio[i])
            partner_waves.append(np.zeros(0, np.int16) if partner is None else partner)
            keeps.append(keep)
        else:
            wave = pcm16_float(audio[i])
            if partner is not None:
                wave = mix_waves(wave, pcm16_float(partner), lam)
            tokens, freqs, times = featurize(wave, sample, spec.epoch, config)
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
                "draw": sample.draw,
                "mix": lam,
                "partner_label_ids": sample.partner.label_ids if lam < 1.0 else (),
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
        arrays["waves"] = np.concatenate([*waves, *partner_waves, np.zeros(0, np.int16)])
        lengths = [[len(w) for w in ws] for ws in (waves, partner_waves)]
        arrays |= device_layout(placed, *lengths, keeps, spec.epoch, config)
    return arrays


def device_layout(
    placed: list[dict],
    lengths: list[int],
    partner_lengths: list[int],
    keeps: list[torch.Tensor],
    epoch: int,
    config: FeatureConfig,
) -> dict[str, np.ndarray]:
    """The arrays that make a batch's placed samples on the device: their
    `loaders.device_features.layout` ("layout"; `lengths` of their waveforms, `partner_lengths` of
    their mixup partners', 0 for none), and as the recipe asks the indices of the patches token
    dropout keeps (`keeps`: each sample's `keep_mask`) end to end ("keep"), the scaled noise
    ("noise") and the mixup weights (the placed samples' "mix": `assemble` drew them by
    `mix_lambda`, as the CPU path does). Each keyed draw is the CPU path's, by the same helper; a
    new one travels as a `LAYOUT` column (integers) or as an array named in `loaders.batch.DRAWS`
    (a `Waveforms` field)."""
    stream = config.stream
    column = lambda name: [s[name] for s in placed]
    patches_in = [s["tokens"] + s["dropped"] for s in placed]
    frames = [n // FREQ_TOKENS * PATCH for n in patches_in]
    idents = [sample_ident(s["key"], s["draw"]) for s in placed]
    augment = np.array([augment_draw(ident, n, epoch, stream) for ident, n in zip(idents, frames)])
    noise = (
        [noise_draw((n, N_MELS), stream.seed, epoch, ident) for ident, n in zip(idents, frames)] if stream.noise else []
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
        partners=partner_lengths,
    )
    arrays = {"layout": table}
    if stream.token_dropout or stream.token_dropout_max:
        arrays["keep"] = np.concatenate([np.flatnonzero(k.numpy()) for k in keeps] + [np.zeros(0, np.int64)])
    if stream.noise:
        arrays["noise"] = torch.cat([n for n, _ in noise] + [torch.zeros(0, N_MELS)]).numpy()
    if stream.mixup:
        arrays["mix"] = np.array(column("mix"), np.float32)
    return arrays


def _name_lost_partners(spec: BatchSpec, audio: dict[int, np.ndarray], failed: list[dict]) -> None:
    """A mixup partner that could not be read is a failure like any (counted, named), and its
    sample goes unmixed: its failure says whose partner it was. Partners are read last, and
    `read_audio` lists failures in read order, so theirs are the last ones."""
    owners = [sample for sample in spec.samples if sample.partner is not None]
    lost = [owner for j, owner in enumerate(owners) if len(spec.samples) + j not in audio]
    for owner, failure in zip(lost, failed[len(failed) - len(lost) :]):
        failure["reason"] = f"mixup partner of {owner.key}: {failure['reason']} (the sample is left unmixed)"


def read_audio(samples: Sequence[SampleSpec], config: FeatureConfig) -> Reads:
    """Waveforms by position in `samples` (cut to the samples their features need), read as one ranged request per
    contiguous run of members in each shard (retried for up to the stream's `storage_timeout` when
    the store fails transiently) and verified; holes named by shard and key; what the reads cost.
    Failures come in the order of `samples`. A read the storage cannot serve raises `StorageFailure`."""
    members = [Member(s.offset, s.nbytes, s.xxh3_64) for s in samples]
    policy = RetryPolicy(timeout_s=config.stream.storage_timeout)
    spans = [member_span(config.source_dir(s.source) / s.shard, m) for s, m in zip(samples, members)]
    data, stats = read_spans(spans, policy)
    audio, failed = {}, []
    for position, (sample, member, read) in enumerate(zip(samples, members, data)):
        check_read(config.source_dir(sample.source) / sample.shard, read)
        problem = member_problem(read, sample.key, member)
        if problem is None:
            wav = memoryview(read)[tarfile.BLOCKSIZE :]
            problem, audio[position] = _kept_audio(wav, sample, config)
        if problem:
            audio.pop(position, None)
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
    if config.stream.random_cut and sample.row >= 0:  # (a mixup partner, row -1, is read from its start)
        shift, pool = config.spec.resolution(sample.scale)
        frames = (sample.tokens + sample.dropped) // FREQ_TOKENS * PATCH
        first, keep = window_samples(sample.window_start, frames, config.spec.sample_rate, float(shift), int(pool))
    begin = PCM16_HEADER_BYTES + 2 * first
    return None, pcm16_samples(bytes(wav[begin : begin + 2 * keep]))


def featurize(
    waveform: np.ndarray, sample: SampleSpec, epoch: int, config: FeatureConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised spectrogram of `waveform` (float32: the sample's, or mixed with its partner's) at the sample's scale (of
    its window's audio), optionally masked and noised, as patches + positions: the patches token
    dropout keeps, with their own positions."""
    stream = config.stream
    spec = config.spec.spectrogram(waveform, sample.scale, capacity=stream.max_tokens)
    if stream.freq_mask or stream.time_mask:
        spec = masked(spec, augment_draw(sample.ident, spec.shape[0], epoch, stream))
    if stream.noise:
        spec = add_noise(spec, stream.seed, epoch, sample.ident)
    patches, freqs, times = patchify(spec)
    if sample.dropped:
        keep = keep_mask(len(patches), len(patches) - sample.dropped, stream.seed, epoch, sample.ident)
        patches, freqs, times = patches[keep], freqs[keep], times[keep]
    return patches, freqs, times


def augment_draw(ident: str, frames: int, epoch: int, stream: StreamConfig) -> tuple[int, int, int, int]:
    """SpecAugment's draw (`augment_spans`) for the sample `ident` (`sample_ident`) of `frames`
    frames, keyed by the seed, the epoch and the sample; zeros where masking is off."""
    if not (stream.freq_mask or stream.time_mask):
        return 0, 0, 0, 0
    rng = keyed_rng(stream.seed, epoch, _SALT_AUGMENT, ident)
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
    targets = None
    if config.stream.mixup:
        own, other = [s["label_ids"] for s in samples], [s["partner_label_ids"] for s in samples]
        targets = soft_targets(own, other, [s["mix"] for s in samples], config.num_classes)
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
        targets=targets,
        draws=[s["draw"] for s in samples] if config.stream.sampling == "balanced" else [],
    )


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Arrays that came through Ray are read-only; torch wants to own writable memory."""
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _failure(sample: SampleSpec, reason: str) -> dict:
    return {"key": sample.key, "shard": sample.shard, "reason": reason}
