"""Mixup in the stream: the mixed features against AST's mixing code written out here (torch +
torchaudio's Kaldi fbank), the soft targets against the lambda and labels, the keyed rate,
partners and lambda, a partner that cannot be read, and evaluation that never mixes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from elasticast.training.config import TrainConfig
from loaders import PackedStream
from loaders.device_features import to_device
from loaders.features import patchify
from loaders.mixup import mix_lambda, mixup_partners
from loaders.plan import fnv1a64
from shards import ShardDataset

from conftest import kaldi_reference_fbank

CHI2_999 = {9: 27.877}  # chi-square critical value at p = 0.001 (tables), by degrees of freedom


def mixing(shards: Path, **options) -> PackedStream:
    settings = {"rows_per_batch": 1, "max_tokens": 80, "backend": "local", "mixup": 1.0, "seed": 4, **options}
    return PackedStream(shards / "train", **settings)


def ast_mixed_features(first: np.ndarray, second: np.ndarray, lam: float, rate: int, stats: dict) -> torch.Tensor:
    """AST's `_wav2fbank(filename, filename2)`, step by step, then the loader's normalisation and
    16-frame floor: the partner's mean removed over all of it, cut or zero-padded, mixed, the
    mean removed again."""
    waveform1, waveform2 = torch.tensor(first)[None], torch.tensor(second)[None]
    waveform1, waveform2 = waveform1 - waveform1.mean(), waveform2 - waveform2.mean()
    if waveform1.shape[1] > waveform2.shape[1]:
        temp_wav = torch.zeros(1, waveform1.shape[1])
        temp_wav[0, 0 : waveform2.shape[1]] = waveform2
        waveform2 = temp_wav
    else:
        waveform2 = waveform2[0, 0 : waveform1.shape[1]]
    mix_waveform = lam * waveform1 + (1 - lam) * waveform2
    waveform = (mix_waveform - mix_waveform.mean())[0]
    fbank = torch.from_numpy(kaldi_reference_fbank(waveform.numpy(), rate)).float()
    fbank = (fbank - stats["mean"]) / (2 * stats["std"])
    return fbank[: fbank.shape[0] // 16 * 16]


def delivered(stream: PackedStream, epoch: int = 0, keys: set[str] | None = None):
    """(sample's spec, its batch, its position there) of every delivered sample (`keys`: of the
    batches that hold one of them)."""
    for spec, batch in zip(stream.specs(epoch), stream.epoch(epoch)):
        if keys is not None and not keys & set(batch.keys):
            continue
        batch = to_device(batch, "cpu", stream.featurizer)  # featurize="device": mixed and featurized here
        by_key = {s.key: s for s in spec.samples}
        for i, key in enumerate(batch.keys):
            yield by_key[key], batch, i


def tokens_of(batch, i: int) -> torch.Tensor:
    return batch.patches[batch.row[i]][batch.segment_ids[batch.row[i]] == batch.slot[i]]


def test_mixed_features_and_soft_targets_are_asts(synthetic_shards):
    """Every sample mixed (rate 1): where the partner's label differs, the target holds lambda on
    the sample's label and 1 - lambda on the partner's, and the sample's tokens are the fbank of
    AST's mixed waveform at that lambda (partners shorter and longer than their sample both occur);
    where the labels agree the target is the label itself."""
    dataset = ShardDataset(synthetic_shards)
    stats, checked, lengths = dataset.fbank_stats, 0, set()
    for sample, batch, i in delivered(mixing(synthetic_shards)):
        partner = sample.partner
        own, other = sample.label_ids[0], partner.label_ids[0]
        target = batch.targets[i]
        assert target.sum() == pytest.approx(1.0) and int(batch.labels[i]) == own
        if own == other:
            assert target[own] == pytest.approx(1.0)
            continue
        lam = float(target[own])
        assert 0.0 < lam < 1.0 and target[other] == pytest.approx(1.0 - lam) and int((target > 0).sum()) == 2
        first, rate = dataset.read_sample("train", sample.key)
        second, _ = dataset.read_sample("train", partner.key)
        lengths.add(np.sign(len(second) - len(first)))
        reference = patchify(ast_mixed_features(first, second, lam, rate, stats))[0]
        assert torch.allclose(tokens_of(batch, i), reference, atol=2e-4), sample.key
        checked += 1
    assert checked >= 10 and {-1, 1} <= lengths


def test_mixing_is_keyed_rate_partners_and_lambda():
    """Over 20,000 keys at rate 0.5: about half mixed, partners uniform over a pool of 10
    (chi-square), each choice fixed by (seed, epoch, key); lambda ~ Beta(10, 10): mean 1/2 and
    variance 1 / (4 (2 alpha + 1)) = 1/84."""
    from loaders.config import StreamConfig

    hashes = fnv1a64(np.array([f"clip-{i}" for i in range(20000)]))
    config = StreamConfig(rows_per_batch=1, mixup=0.5, seed=2)
    partners = mixup_partners(hashes, 10, config, epoch=3)
    mixed = partners >= 0
    assert abs(mixed.mean() - 0.5) < 0.02
    counts = np.bincount(partners[mixed], minlength=10)
    expected = mixed.sum() / 10
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_999[9]
    assert np.array_equal(partners[::-1], mixup_partners(hashes[::-1], 10, config, epoch=3))
    assert (partners != mixup_partners(hashes, 10, config, epoch=4)).mean() > 0.4
    lams = np.array([mix_lambda(2, 3, f"clip-{i}", 10.0) for i in range(4000)])
    assert abs(lams.mean() - 0.5) < 0.01 and abs(lams.var() - 1 / 84) < 0.0015
    assert mix_lambda(2, 3, "clip-7", 10.0) == lams[7] != mix_lambda(2, 4, "clip-7", 10.0)


@pytest.mark.parametrize("featurize", ["loader", "device"])
def test_a_partner_that_cannot_be_read_leaves_its_sample_unmixed_and_is_named(synthetic_shards, tmp_path, featurize):
    root = tmp_path / "broken"
    shutil.copytree(synthetic_shards, root)
    stream = mixing(root, featurize=featurize)
    victim = next(s.partner for spec in stream.specs(0) for s in spec.samples if s.partner.key != s.key)
    row = next(r for r in ShardDataset(root).index("train").to_pylist() if r["key"] == victim.key)
    with open(root / "train" / row["shard"], "r+b") as handle:
        handle.seek(row["offset"])
        handle.write(b"garbage!" * 8)
    keys = {s.key for spec in stream.specs(0) for s in spec.samples if s.partner.key == victim.key}
    unmixed = {
        b.keys[i]: tokens_of(b, i) for _, b, i in delivered(mixing(root, mixup=0.0, featurize=featurize), 0, keys)
    }
    owners = 0
    for sample, batch, i in delivered(stream, 0, keys):
        if sample.partner.key == victim.key and sample.key != victim.key:
            assert batch.targets[i, sample.label_ids[0]] == 1.0 and torch.equal(
                tokens_of(batch, i), unmixed[sample.key]
            )
            assert any(f"mixup partner of {sample.key}" in f["reason"] and f["key"] == victim.key for f in batch.failed)
            owners += 1
    assert owners >= 1


def test_evaluation_never_mixes_and_training_without_mixup_has_no_targets(synthetic_shards):
    config = TrainConfig(mixup=0.5, sampling="balanced", freq_mask=8)
    assert config.stream().mixup == 0.5 and config.stream().sampling == "balanced"
    valid = config.valid_stream()
    assert (valid.mixup, valid.sampling, valid.freq_mask, valid.scales) == (0.0, "uniform", 0, (1.0,))
    assert all(b.targets is None for b in mixing(synthetic_shards, mixup=0.0).epoch(0))
    for bad in ({"mixup": 1.5}, {"mixup": -0.1}, {"mixup_alpha": 0.0}):  # refused before any job starts
        with pytest.raises(ValueError, match="mixup"):
            TrainConfig(**bad)


def test_whether_and_with_which_position_a_sample_mixes_follows_its_key():
    """The plan's mixup choices are keyed by (seed, epoch, key), not by where a sample lands: with
    the index reversed (other shards, other packing, other delivery order) each key mixes or not
    as before, with the same partner position; another epoch draws afresh."""
    from loaders.config import StreamConfig
    from loaders.plan import Index, plan_epoch

    n = 400
    index = Index(np.array([f"k{i}" for i in range(n)]), np.arange(n) // 25, np.full(n, 48000), np.full(n, 16000))
    reversed_index = Index(index.keys[::-1], index.shard, index.num_samples, index.sample_rate)
    config = StreamConfig(rows_per_batch=2, mixup=0.5, seed=1)
    choice = lambda plan, keys: dict(zip(keys[plan.sample].tolist(), plan.partner.tolist()))
    base = choice(plan_epoch(index, config, 0), index.keys)
    assert choice(plan_epoch(reversed_index, config, 0), reversed_index.keys) == base
    assert 0.4 < np.mean([p >= 0 for p in base.values()]) < 0.6
    later = choice(plan_epoch(index, config, 1), index.keys)
    assert sum(base[k] != later[k] for k in base) > n // 3
