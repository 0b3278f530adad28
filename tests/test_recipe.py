"""The paper's training recipe in the stream (issue 24): token dropout, random length cuts and
noise, each checked by value against torchaudio's Kaldi fbank of the whole clip (windows and
kept patches found in it by their positions) and numpy; keyed by (seed, epoch, key); never on
validation. Synthetic shard set, local backend: real tars, decoding and fbanks, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from elasticast.config import preset
from elasticast.model import ElasticAST
from elasticast.training.config import TrainConfig
from jobs.train_worker import streams
from loaders import PackedStream
from loaders.assemble import read_audio
from loaders.batch import from_features
from loaders.dropout import keep_mask
from loaders.features import patchify
from loaders.noise import add_noise
from shards import ShardDataset

from conftest import SYNTHETIC_PATCHES, kaldi_reference_fbank

RECIPE = {"token_dropout": 0.1, "random_cut": 32, "noise": True}


def stream(shards: Path, **options) -> PackedStream:
    return PackedStream(shards / "train", **{"rows_per_batch": 2, "max_tokens": 160, "backend": "local", **options})


def reference_patches(spec: np.ndarray, freq_pos: torch.Tensor, time_pos: torch.Tensor) -> torch.Tensor:
    """The 16 x 16 patch at each (frequency, time) position of `spec` `[frames, 128]`, flattened
    as 16 mel bins of 16 frames each, by plain slicing."""
    return torch.stack(
        [
            torch.from_numpy(spec[16 * t : 16 * t + 16, 16 * f : 16 * f + 16].T.reshape(-1).astype(np.float32))
            for f, t in zip(freq_pos.tolist(), time_pos.tolist())
        ]
    )


def delivered(shards: Path, epoch: int = 0, **options) -> dict[str, tuple]:
    """Per key: (patches, freq_pos, time_pos, planned window start) of one epoch of the stream."""
    s = stream(shards, **options)
    plan = s.plan(epoch)
    keys = s.index.keys.to_pylist()
    start = {keys[i]: int(w) for i, w in zip(plan.sample, plan.window_start)}
    out = {}
    for batch in s.epoch(epoch):
        for i, key in enumerate(batch.keys):
            where = batch.segment_ids[batch.row[i]] == batch.slot[i]
            r = batch.row[i]
            out[key] = (batch.patches[r, where], batch.freq_pos[r, where], batch.time_pos[r, where], start[key])
    return out


def clip_patches(shards: Path) -> dict[str, int]:
    """Patches of each synthetic clip at C = 1, by key (clip i: SYNTHETIC_PATCHES[i])."""
    keys = ShardDataset(shards).index("train").column("key").to_pylist()
    return {key: SYNTHETIC_PATCHES[int(key[-2:])] for key in keys}


def normalised_reference(shards: Path, key: str) -> np.ndarray:
    dataset = ShardDataset(shards)
    audio, rate = dataset.read_sample("train", key)
    stats = dataset.fbank_stats
    return (kaldi_reference_fbank(audio, rate) - stats["mean"]) / (2 * stats["std"])


def test_kept_tokens_carry_their_own_positions(synthetic_shards):
    """Token dropout 0.1: a 6-patch clip (48 tokens) keeps 44 (floor(4.8) dropped), a 1-patch clip
    (8 tokens) all 8; every kept token is the reference fbank's patch at its own (frequency, time)
    position, each position at most once, and the same ones in a re-made epoch."""
    got = delivered(synthetic_shards, token_dropout=0.1)
    sizes = {key: len(p) for key, (p, *_) in got.items()}
    patches = clip_patches(synthetic_shards)
    assert sizes == {key: 8 * n - int(0.8 * n) for key, n in patches.items()}  # by hand: floor(8n * 0.1)
    for key, (values, freqs, times, _) in got.items():
        positions = (times * 8 + freqs).tolist()
        assert len(set(positions)) == len(positions) and max(positions) < 8 * patches[key]
        assert torch.allclose(
            values, reference_patches(normalised_reference(synthetic_shards, key), freqs, times), atol=1e-4
        )
    prefixes = [key for key, (_, f, t, _) in got.items() if (t * 8 + f).tolist() == list(range(len(f)))]
    assert len(prefixes) <= 3  # the dropped patches are spread over the clip, not its end (1-patch clips drop none)
    again = delivered(synthetic_shards, token_dropout=0.1)
    assert all(torch.equal(got[k][2] * 8 + got[k][1], again[k][2] * 8 + again[k][1]) for k in got)


def test_keep_mask_by_hand():
    """keep_mask keeps exactly `kept` of `tokens`, fixed by (seed, epoch, key): 32 frames of 128
    bins are 16 tokens; keeping 12 leaves positions (t, f) = divmod(i, 8) of the kept indices i."""
    mask = keep_mask(16, 12, 3, 1, "clip")
    assert mask.dtype == torch.bool and int(mask.sum()) == 12
    assert torch.equal(mask, keep_mask(16, 12, 3, 1, "clip"))
    assert not all(torch.equal(mask, keep_mask(16, 12, 3, e, "clip")) for e in (2, 3, 4))
    assert bool(keep_mask(16, 16, 3, 1, "clip").all())
    spec = torch.arange(32 * 128, dtype=torch.float32).reshape(32, 128)  # value = 128 * frame + bin
    patches, freqs, times = (x[mask] for x in patchify(spec))
    kept = torch.nonzero(mask).flatten().tolist()
    assert times.tolist() == [i // 8 for i in kept] and freqs.tolist() == [i % 8 for i in kept]
    assert patches[:, 0].tolist() == [128 * 16 * (i // 8) + 16 * (i % 8) for i in kept]  # its first frame, bin


def test_pooling_and_attention_see_only_the_kept_tokens(synthetic_shards):
    """The model on a packed batch with dropout gives each sample the logits of that sample alone,
    made from the reference fbank's patches at its kept positions only."""
    torch.manual_seed(0)
    model = ElasticAST(preset("tiny", 3, dim=32, depth=2, heads=2)).eval()
    batch = next(iter(stream(synthetic_shards, token_dropout_max=0.5, seed=4, packing="greedy").epoch(0)))
    assert batch.num_samples > 2 and bool((batch.segment_ids == 0).any())  # several samples, and padding
    with torch.no_grad():
        packed = model(batch)
        for i, key in enumerate(batch.keys):
            where = batch.segment_ids[batch.row[i]] == batch.slot[i]
            freqs, times = batch.freq_pos[batch.row[i], where], batch.time_pos[batch.row[i], where]
            alone = reference_patches(normalised_reference(synthetic_shards, key), freqs, times)
            single = from_features([(alone, freqs, times)], np.array([0]), np.array([0]), np.ones(1), [key])
            assert torch.allclose(packed[i], model(single)[0], atol=1e-4)


def test_random_windows_are_the_clips_frames_and_cover_it_over_epochs(synthetic_shards):
    """random_cut 32: an 8-patch clip (133 frames) gets T in [32, 128] frames, a multiple of 16, and
    its patches are the reference fbank's frames [start, start + T) of the whole clip; a 1-patch
    clip (< 32 frames) is taken whole. Planned over many epochs, the windows differ by epoch and
    together cover every frame of each longer clip."""
    frames = {key: 16 * n + 5 for key, n in clip_patches(synthetic_shards).items()}
    for epoch in range(2):
        for key, (values, freqs, times, start) in delivered(synthetic_shards, epoch, random_cut=32).items():
            length = len(values) // 8 * 16  # 8 tokens per 16 frames
            if frames[key] < 32:
                assert (start, length) == (0, 16)
            else:
                assert 32 <= length <= frames[key] // 16 * 16 and length % 16 == 0 and start + length <= frames[key]
            reference = normalised_reference(synthetic_shards, key)[start : start + length]
            assert torch.allclose(values, reference_patches(reference, freqs, times), atol=1e-4)
    planner = stream(synthetic_shards, random_cut=32)
    planned = [sample for spec in planner.specs(0) for sample in spec.samples]
    audio, failed, _ = read_audio(planned, planner.features)
    for i, sample in enumerate(planned):  # only the window's samples are decoded: 400-sample windows, 160 apart
        length = sample.tokens // 8 * 16
        decoded = min(400 + (length - 1) * 160, sample.num_samples - 160 * sample.window_start)
        assert len(audio[i]) == decoded < sample.num_samples or length < 32
    assert not failed
    keys = planner.index.keys.to_pylist()
    covered = {key: np.zeros(f, bool) for key, f in frames.items()}
    windows = {key: set() for key in frames}
    for epoch in range(600):
        plan = planner.plan(epoch)
        for i, start, tokens in zip(plan.sample, plan.window_start.tolist(), plan.tokens.tolist()):
            covered[keys[i]][start : start + tokens // 8 * 16] = True
            windows[keys[i]].add((start, tokens))
    long = [key for key, f in frames.items() if f >= 48]
    assert all(covered[key].all() for key in long)
    assert all(len(windows[key]) > 20 for key in long)


def test_the_cut_share_counts_only_what_the_cap_removes(synthetic_shards):
    """max_frames 64 crops the 5..8-patch clips; random windows do not add to the cut."""
    capped = stream(synthetic_shards, max_frames=64).plan(0)
    windowed = stream(synthetic_shards, max_frames=64, random_cut=32).plan(0)
    cut_by_key = lambda plan: dict(zip(plan.sample.tolist(), plan.cut.tolist()))
    assert cut_by_key(windowed) == cut_by_key(capped) and sum(cut_by_key(capped).values()) > 0
    assert np.all(windowed.tokens <= 32)  # windows within the cap's 64 frames


def test_noise_is_uniform_noise_and_a_roll_as_numpy_draws_them():
    """add_noise against numpy: the same keyed draws (amplitude U(0, 0.1), U(0, 1) noise, shift in
    -10..9), then np.roll along time; over many keys, every shift of -10..9 and no other."""
    spec = torch.randn(48, 128)
    for seed, epoch, key in [(0, 0, "a"), (1, 3, "clip07")] + [(2, e, f"k{e}") for e in range(20)]:
        rng = np.random.default_rng([seed, epoch, 0x2015E, *key.encode()])
        amplitude = rng.random() * 0.1
        noise = rng.random((48, 128), dtype=np.float32)
        shift = int(rng.integers(-10, 10))
        expected = np.roll(spec.numpy() + noise * amplitude, shift, axis=0)
        assert np.allclose(add_noise(spec, seed, epoch, key).numpy(), expected, atol=1e-6)
    frames = torch.arange(48, dtype=torch.float32)[:, None].expand(48, 128)  # row i holds i
    shifts = set()
    for i in range(400):
        noised = add_noise(frames, 0, 0, f"k{i}")
        first = int(torch.floor(noised[0, 0]))  # the frame that now comes first (noise < 0.1)
        shifts.add((-first + 24) % 48 - 24)
        assert (
            0 <= float((noised - frames.roll(-first, 0)).min()) and float((noised - frames.roll(-first, 0)).max()) < 0.1
        )
    assert shifts == set(range(-10, 10))


def test_noise_reaches_the_training_batches(synthetic_shards):
    """With --noise, a sample's patches are the reference fbank's plus its keyed noise, rolled."""
    got = delivered(synthetic_shards, noise=True, seed=2)
    for key in sorted(got)[:6]:
        values, freqs, times, _ = got[key]
        reference = normalised_reference(synthetic_shards, key)[: len(values) // 8 * 16]
        noised = add_noise(torch.from_numpy(reference.astype(np.float32)), 2, 0, key).numpy()
        assert torch.allclose(values, reference_patches(noised, freqs, times), atol=1e-4)
        assert not torch.allclose(values, reference_patches(reference, freqs, times), atol=1e-3)


def test_validation_gets_no_dropout_cuts_or_noise(synthetic_shards, tmp_path):
    """The trainer's validation streams run without the recipe's augmentations: every sample whole,
    its patches the reference fbank's; its training stream has them."""
    config = TrainConfig(
        shards=str(synthetic_shards),
        valid_split="train",
        out=str(tmp_path),
        loader="local",
        freq_mask=8,
        time_mask=8,
        **RECIPE,
    )
    train, valid = streams(config, rank=0, world=1)
    assert (train.config.token_dropout, train.config.random_cut, train.config.noise) == (0.1, 32, True)
    (check,) = valid.values()
    settings = ("freq_mask", "time_mask", "token_dropout", "token_dropout_max", "random_cut", "noise")
    assert [getattr(check.config, name) for name in settings] == [0, 0, 0.0, 0.0, 0, False]
    plan = check.plan(0)
    assert not plan.dropped.any() and not plan.window_start.any()
    for batch in check.epoch(0):
        for i, key in enumerate(batch.keys):
            where = batch.segment_ids[batch.row[i]] == batch.slot[i]
            freqs, times = batch.freq_pos[batch.row[i], where], batch.time_pos[batch.row[i], where]
            reference = normalised_reference(synthetic_shards, key)
            assert len(freqs) == reference.shape[0] // 16 * 8
            assert torch.allclose(
                batch.patches[batch.row[i], where], reference_patches(reference, freqs, times), atol=1e-4
            )


@pytest.mark.parametrize(
    "bad",
    [
        {"token_dropout": 1.0},
        {"token_dropout_max": -0.1},
        {"token_dropout": 0.1, "token_dropout_max": 0.2},
        {"random_cut": 8},
        {"random_cut": 4000},
    ],
)
def test_bad_recipe_settings_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)
