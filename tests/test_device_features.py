"""The device featurizer equals the CPU path (mixup, spectrogram, keyed SpecAugment, noise,
patchify, token dropout, placement) for a batch mixing every C of the grid, both compressions and both
recipes, and torchaudio's Kaldi fbank; a stream featurized on the device delivers the loader's
batches with every option of the training recipe (token dropout, random cuts, noise, mixup) and
both packers."""

from __future__ import annotations

from dataclasses import replace
from itertools import islice

import numpy as np
import pytest
import torch

from elasticast.training import TrainConfig, build_model, make_optimizer, make_scheduler, train_epoch
from loaders import PackedStream
from loaders.batch import from_features
from loaders.device_features import DeviceFeaturizer, layout, to_device, waveforms
from loaders.dropout import keep_mask
from loaders.feature_spec import FeatureSpec
from loaders.features import augment_spans, patchify, spec_augment
from loaders.noise import add_noise, noise_draw
from loaders.threads import torch_threads
from loaders.tokens import SCALE_GRID
from shards.audio import pcm16_float

from conftest import kaldi_reference_fbank

LENGTH = 1024  # tokens a row
RATE = 16000


def clips(count: int, seed: int) -> list[np.ndarray]:
    """int16 clips of random lengths, with one shorter than a window and one longer than a row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(400, RATE * 8, count)
    lengths[:2] = 250, RATE * 30
    return [(rng.standard_normal(n) * 3000 + 500).astype(np.int16) for n in lengths]


def ast_mixed(first: np.ndarray, second: np.ndarray, lam: float) -> np.ndarray:
    """AST's `_wav2fbank` mixing, written out in numpy (float64): each mean removed, the partner
    zero-padded or cut to the sample's length, mixed, the mean removed again."""
    first, second = first - first.mean(), second - second.mean()
    fitted = np.zeros_like(first)
    fitted[: min(len(first), len(second))] = second[: len(first)]
    mixed = lam * first + (1 - lam) * fitted
    return (mixed - mixed.mean()).astype(np.float32)


def cpu_batch(spec: FeatureSpec, waves, scales, rows, offsets, masks=(0, 0), noise=False, placed=None, mixes=None):
    """The CPU path, sample by sample: what `loaders.assemble` computes and places (with noise keyed
    by seed 0, epoch 0 and key i; `placed`: the tokens token dropout keeps of each; `mixes`: each
    one's (partner, lambda), None for none)."""
    features, draws = [], []
    for i, (wave, scale) in enumerate(zip(waves, scales)):
        wave = pcm16_float(wave)
        if mixes is not None and mixes[i] is not None:
            wave = ast_mixed(wave.astype(np.float64), pcm16_float(mixes[i][0]).astype(np.float64), mixes[i][1])
        frames = spec.spectrogram(wave, scale, capacity=LENGTH)
        draws.append(augment_spans(np.random.default_rng(i), frames.shape, *masks))
        frames = spec_augment(frames, np.random.default_rng(i), *masks)
        patches = patchify(add_noise(frames, 0, 0, str(i)) if noise else frames)
        keep = keep_mask(len(patches[0]), len(patches[0]) if placed is None else placed[i], 0, 0, str(i))
        features.append(tuple(values[keep] for values in patches))
    batch = from_features(features, rows, offsets, np.asarray(scales), [str(i) for i in range(len(waves))], rows=3)
    return batch, np.array(draws)


def packed(sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Samples dealt to 3 rows in turn, end to end (so rows hold several samples at a time)."""
    rows, offsets, fill = np.arange(len(sizes)) % 3, np.zeros(len(sizes), np.int64), np.zeros(3, np.int64)
    for i, size in enumerate(sizes):
        offsets[i], fill[rows[i]] = fill[rows[i]], fill[rows[i]] + size
    return rows, offsets


@pytest.mark.parametrize("recipe", ["elasticast", "paper"])
@pytest.mark.parametrize("compression", ["shift", "avgpool"])
def test_one_batched_pass_equals_the_cpu_path_for_every_scale(recipe, compression):
    spec = FeatureSpec(RATE, -4.4, 4.9, compression=compression, recipe=recipe, max_frames=2048)
    assert_cpu_path(spec, list(SCALE_GRID) if compression == "shift" else [1.0, 2.0, 3.0, 4.0, 2.0, 1.0])


@pytest.mark.parametrize(
    "compression, dropout, noise, mixup",
    [
        ("shift", 0.3, False, False),
        ("avgpool", 0.0, True, False),
        ("shift", 0.6, True, False),
        ("avgpool", 0.6, True, False),
        ("shift", 0.0, False, True),
        ("avgpool", 0.3, True, True),
    ],
)
def test_token_dropout_noise_and_mixup_on_the_device_equal_the_cpu_path(compression, dropout, noise, mixup):
    """The host's keyed draws (the kept patches' indices, the scaled noise and its roll, the mixup
    weights with the partners' waveforms) applied in the batched pass give the CPU path's kept
    patches, at their own positions; mixing against AST's arithmetic written out here."""
    spec = FeatureSpec(RATE, -4.4, 4.9, compression=compression, recipe="paper", max_frames=2048)
    assert_cpu_path(spec, [1.0, 3.0, 2.0, 1.0, 4.0, 2.0], dropout, noise, mixup)


def test_the_papers_fixed_length_and_5_ms_shift_equal_the_cpu_path():
    """Every clip cropped or padded to int(1024 / C) frames, at a 5 ms shift at C = 1 (Epic-Sounds)."""
    spec = FeatureSpec(RATE, -4.4, 4.9, recipe="paper", fixed_frames=1024, frame_shift_ms=5.0, max_frames=2048)
    assert_cpu_path(spec, [1.0, 1.6, 2.2, 3.0, 4.0])


def partnered(waves: list[np.ndarray], seed: int) -> list[tuple[np.ndarray, float] | None]:
    """Every other sample's mixup (partner, lambda): partners from another clip's middle (their
    own mean), longer than their sample, half and a tenth as long."""
    rng = np.random.default_rng(seed)
    mixes = [None] * len(waves)
    for i in range(1, len(waves), 2):
        other = waves[(i + 1) % len(waves)]
        size = len(waves[i]) * (15, 5, 1)[i // 2 % 3] // 10 + 1
        partner = np.resize(other[len(other) // 3 :], size)
        mixes[i] = (partner + np.int16(700 * i), float(rng.beta(10, 10)))
    return mixes


def assert_cpu_path(
    spec: FeatureSpec, scales: list[float], dropout: float = 0.0, noise: bool = False, mixup: bool = False
) -> None:
    """The device's batched pass equals `cpu_batch`; `dropout`: the share of each sample's patches
    token dropout leaves out; `noise`: with noise; `mixup`: every other sample mixed (`partnered`)."""
    waves = [w[: spec.samples_needed(len(w), c, capacity=LENGTH)] for w, c in zip(clips(len(scales), 1), scales)]
    tokens = [int(spec.counts(len(w), c, capacity=LENGTH).tokens) for w, c in zip(waves, scales)]
    placed = [n - int(n * dropout) for n in tokens]
    rows, offsets = packed(placed)
    mixes = partnered(waves, 5) if mixup else None
    expected, draws = cpu_batch(spec, waves, scales, rows, offsets, (48, 96), noise, placed, mixes)
    slots = [int(expected.slot[expected.keys.index(str(i))]) for i in range(len(waves))]
    keep = [np.flatnonzero(keep_mask(n, k, 0, 0, str(i))) for i, (n, k) in enumerate(zip(tokens, placed))]
    drawn = [noise_draw((n // 8 * 16, 128), 0, 0, str(i)) for i, n in enumerate(tokens)]
    rolls = [shift for _, shift in drawn] if noise else None
    partners = [np.zeros(0, np.int16) if m is None else m[0] for m in mixes or [None] * len(waves)]
    lengths = [len(p) for p in partners] if mixup else None
    table = layout(spec, [len(w) for w in waves], scales, tokens, rows, offsets, slots, draws, placed, rolls, lengths)
    audio = waveforms(
        np.concatenate(waves + partners),
        table,
        keep=torch.from_numpy(np.concatenate(keep)) if dropout else None,
        noise=torch.cat([values for values, _ in drawn]) if noise else None,
        mix=torch.tensor([1.0 if m is None else m[1] for m in mixes], dtype=torch.float32) if mixup else None,
    )
    width = int((offsets + placed).max())
    patches, segment_ids, freq_pos, time_pos = DeviceFeaturizer(spec)(audio, 3, width)
    assert draws[:, 1].any() and draws[:, 3].any()  # bands and spans were masked
    assert sum(placed) < sum(tokens) if dropout else placed == tokens
    assert not noise or len({shift for shift in rolls}) > 1  # samples rolled by different shifts
    assert not mixup or {np.sign(p - len(w)) for p, w in zip(lengths, waves) if p} == {-1, 1}
    assert (patches - expected.patches).abs().max() <= 1e-4
    assert torch.equal(segment_ids, expected.segment_ids)
    assert torch.equal(freq_pos, expected.freq_pos) and torch.equal(time_pos, expected.time_pos)


@pytest.mark.parametrize("scale", [1.0, 2.6, 4.0])
def test_a_sample_equals_torchaudio_kaldi_fbank(scale):
    """mean 0 and std 0.5 leave the fbank as it is: the patches unfold to Kaldi's frames."""
    spec = FeatureSpec(RATE, 0.0, 0.5, max_frames=2048)
    wave = clips(3, 2)[2]
    tokens = int(spec.counts(len(wave), scale, capacity=LENGTH).tokens)
    table = layout(spec, [len(wave)], [scale], [tokens], [0], [0], [1])
    patches, *_ = DeviceFeaturizer(spec)(waveforms(wave, table), 1, tokens)
    frames = patches[0].reshape(-1, 8, 16, 16).permute(0, 3, 1, 2).reshape(-1, 128)  # undo the patch layout
    reference = kaldi_reference_fbank(pcm16_float(wave), RATE, 10.0 * scale)[: frames.shape[0]]
    assert frames.shape[0] == tokens // 8 * 16 and np.abs(frames.double().numpy() - reference).max() <= 1e-3


def test_a_batch_with_no_samples_is_all_padding():
    spec = FeatureSpec(RATE, -4.4, 4.9)
    table = layout(spec, [], [], [], [], [], [])
    patches, segment_ids, *_ = DeviceFeaturizer(spec)(waveforms(np.zeros(0, np.int16), table), 2, 64)
    assert patches.shape == (2, 64, 256) and not patches.any() and not segment_ids.any()


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory, make_shards):
    out = tmp_path_factory.mktemp("device") / "shards"
    flags = ["--out", str(out), "--demo-clips", "24", "--backend", "local", "--quiet", "--shard-size", "1MiB"]
    assert make_shards.main(flags) == 0
    return out / "train"


RECIPE = {"token_dropout": 0.3, "random_cut": 32, "noise": True, "mixup": 0.5}
SHIFT, AVGPOOL = ("shift", SCALE_GRID), ("avgpool", (1.0, 2.0, 3.0, 4.0))
ONE_BY_ONE = {"dropout": {"token_dropout": 0.3}, "dropout_max": {"token_dropout_max": 0.5}}
ONE_BY_ONE |= {"cut": {"random_cut": 32}, "noise": {"noise": True}, "mixup": {"mixup": 0.5}}
CASES = [pytest.param(*AVGPOOL, {}, id="avgpool-plain")]
CASES += [pytest.param(*SHIFT, options, id=f"shift-{name}") for name, options in ONE_BY_ONE.items()]
CASES += [
    pytest.param(*where, RECIPE | {"packing": packing}, id=f"{where[0]}-all-{packing}")
    for where in (SHIFT, AVGPOOL)
    for packing in ("greedy", "first_fit")
]


@pytest.mark.parametrize("compression, scales, options", CASES)
def test_a_device_stream_delivers_the_loaders_batches(demo_split, compression, scales, options):
    """With each option of the training recipe and all of them with either packer, at random C:
    equal patches (1e-4), the same segments and positions (token dropout's kept ones), the same
    mixup targets. With mixup 2e-4: a mixed demo beep's waveform is bitwise the CPU path's, but its
    fbank has near-floor bins where the featurizer's float32 rounding alone (fed that waveform
    unmixed) differs by up to 1.3e-4 (mixing itself: 1e-4 on random clips, above)."""
    settings = dict(rows_per_batch=1, max_tokens=256, max_frames=256, scales=scales, compression=compression)
    settings |= dict(backend="local", freq_mask=24, time_mask=40, seed=3) | options
    loader = list(PackedStream(demo_split, **settings).epoch(1))
    stream = PackedStream(demo_split, **settings, featurize="device")
    plan, shipped = stream.plan(1), list(stream.epoch(1))
    assert all(b.patches.shape[-1] == 0 and b.audio.samples.dtype == torch.int16 for b in shipped)
    assert plan.dropped.any() == bool(settings.get("token_dropout") or settings.get("token_dropout_max"))
    assert plan.window_start.any() == bool(settings.get("random_cut"))
    assert (plan.partner is not None and (plan.partner >= 0).any()) == bool(settings.get("mixup"))
    placement = ("segment_ids", "freq_pos", "time_pos")
    for want, got in zip(loader, shipped, strict=True):
        assert all(torch.equal(getattr(got, name), getattr(want, name)) for name in placement)  # as shipped
        got = to_device(got, "cpu", stream.featurizer)
        assert got.keys == want.keys and all(torch.equal(getattr(got, name), getattr(want, name)) for name in placement)
        assert (got.patches - want.patches).abs().max() <= (2e-4 if settings.get("mixup") else 1e-4)
        assert got.targets is want.targets is None or torch.equal(got.targets, want.targets)


def test_a_batch_moves_to_a_device_with_its_draws(demo_split):
    settings = dict(rows_per_batch=1, max_tokens=256, max_frames=256, backend="local", featurize="device")
    batch = next(iter(PackedStream(demo_split, **settings, **RECIPE).epoch(0)))
    moved = batch.to("meta").audio
    assert all(t.is_meta for t in (moved.samples, moved.layout, moved.keep, moved.noise, moved.mix))


def test_waveforms_without_a_featurizer_are_refused_by_name(demo_split):
    batch = next(iter(PackedStream(demo_split, rows_per_batch=2, backend="local", featurize="device").epoch(0)))
    with pytest.raises(ValueError, match="featurizer"):
        to_device(batch, "cpu")


def test_training_on_device_features_is_bitwise_reproducible(demo_split):
    """The plain loop, featurizing on the (CPU) device: the same seed trains the same weights, bit for bit
    (4 steps)."""
    config = TrainConfig(shards=str(demo_split.parent), depth=1, rows_per_batch=1, max_tokens=256, max_frames=256)
    config = replace(config, scales=(1.0, 2.2, 3.8), freq_mask=24, time_mask=40, featurize="device")
    runs = []
    with torch_threads(1):  # beside other tests on 2 cores
        for _ in range(2):
            torch.manual_seed(0)
            stream = PackedStream(config.splits("train"), config.stream(backend="local"))
            model = build_model(config, len(stream.labels))
            optimizer = make_optimizer(model, config)
            scheduler = make_scheduler(optimizer, stream.steps(0), config)
            result = train_epoch(
                model,
                islice(stream.epoch(0), 4),
                optimizer,
                scheduler,
                torch.device("cpu"),
                featurizer=stream.featurizer,
            )
            runs.append((result.loss, result.keys, model.state_dict()))
    assert runs[0][:2] == runs[1][:2] and runs[0][0] > 0
    assert all(torch.equal(value, runs[1][2][name]) for name, value in runs[0][2].items())
