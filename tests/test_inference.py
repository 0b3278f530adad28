"""`Classifier.predict`: checkpoints, packing invariance, real files, sliding windows, budgets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from elasticast import Classifier, ElasticAST, load_checkpoint, preset, save_checkpoint
from loaders.batch import from_features
from loaders.feature_spec import FeatureSpec
from loaders.features import patchify
from loaders.tokens import shift_for_scale, token_counts
from shards.audio import AudioError

RATE = 16000
LABELS = ["a", "b", "c"]
MAX_FRAMES = 512
FEATURES = FeatureSpec(sample_rate=RATE, mean=-5.0, std=4.0, max_frames=MAX_FRAMES)
WINDOW_SAMPLES = 400 + (MAX_FRAMES - 1) * 160  # 25 ms window + 511 shifts of 10 ms: exactly 512 frames
HOP_SAMPLES = MAX_FRAMES // 2 * 160


@pytest.fixture(scope="module")
def model() -> ElasticAST:
    torch.manual_seed(0)
    return ElasticAST(preset("tiny", num_classes=3, depth=2, max_frames=MAX_FRAMES))


@pytest.fixture(scope="module")
def classifier(model) -> Classifier:
    return Classifier(model, LABELS, FEATURES)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def probabilities(predictions) -> np.ndarray:
    return np.stack([p.probabilities for p in predictions])


def test_checkpoint_round_trip_predicts_like_the_model_in_memory(tmp_path, model, classifier):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, LABELS, FEATURES, extra={"epoch": 3})
    loaded = Classifier.from_checkpoint(path)
    assert (loaded.labels, loaded.features) == (tuple(LABELS), FEATURES)
    assert load_checkpoint(path).extra == {"epoch": 3}
    clips = [noise(0.7, 1), noise(2.3, 2)]
    assert np.array_equal(
        probabilities(loaded.predict(clips, sample_rate=RATE)),
        probabilities(classifier.predict(clips, sample_rate=RATE)),
    )


def test_checkpoint_errors_name_the_file(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        Classifier.from_checkpoint(tmp_path / "nowhere.pt")
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, LABELS, FEATURES)
    torch.save({**torch.load(path, weights_only=True), "format_version": 99}, path)
    with pytest.raises(ValueError, match="format_version 99"):
        Classifier.from_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an ElasticAST checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="2 labels for a model with num_classes 3"):
        save_checkpoint(path, model, ["a", "b"], FEATURES)
    with pytest.raises(ValueError, match="std"):
        FeatureSpec(sample_rate=RATE, mean=0.0, std=0.0)


def test_clips_predicted_together_equal_each_alone(classifier):
    clips = [noise(seconds, seed) for seed, seconds in enumerate([0.3, 4.0, 1.1, 2.6, 0.02, 3.3])]
    together = classifier.predict(clips, sample_rate=RATE, max_tokens=256, batch_rows=2)
    alone = [classifier.predict([clip], sample_rate=RATE)[0] for clip in clips]
    assert np.allclose(probabilities(together), probabilities(alone), atol=1e-5, rtol=0)
    assert [p.label for p in together] == [p.label for p in alone]
    assert all(p.windows == 1 and p.scale == 1.0 for p in together)


def test_multi_label_uses_sigmoid_single_label_softmax(model, classifier):
    multi = Classifier(model, LABELS, replace(FEATURES, multi_label=True))
    clip = [noise(1.5, 7)]
    single, sigmoid = classifier.predict(clip, sample_rate=RATE)[0], multi.predict(clip, sample_rate=RATE)[0]
    assert np.allclose(sigmoid.probabilities, 1 / (1 + np.exp(-sigmoid.logits)), atol=1e-6)
    assert np.allclose(single.probabilities, torch.softmax(torch.from_numpy(sigmoid.logits), 0).numpy(), atol=1e-6)


def test_fsdd_files_of_different_lengths(fsdd_dir, classifier):
    files = sorted(fsdd_dir.glob("*.wav"), key=lambda f: (sf.info(str(f)).frames, f.name))
    picked = [files[i] for i in np.linspace(0, len(files) - 1, 6).astype(int)]
    assert {sf.info(str(f)).samplerate for f in picked} == {8000}
    assert len({sf.info(str(f)).frames for f in picked}) == 6
    predictions = classifier.predict(picked)
    assert len(predictions) == 6
    for prediction in predictions:
        assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert prediction.labels == tuple(LABELS) and prediction.label in LABELS and prediction.windows == 1
    waveforms = [sf.read(str(f), dtype="float32")[0] for f in picked]
    from_waveforms = classifier.predict(waveforms, sample_rate=8000)  # resampled to 16 kHz like the files
    assert np.allclose(probabilities(from_waveforms), probabilities(predictions), atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 2.6])
def test_clips_are_featurized_as_the_loaders_cpu_path(model, classifier, scale):
    """Classifier featurizes with the device module; the logits are the model's on the CPU path's patches."""
    clips = [noise(0.7, 3), noise(2.3, 4)]
    features = [patchify(FEATURES.spectrogram(clip, scale, max_frames=MAX_FRAMES)) for clip in clips]
    sizes = [f[0].shape[0] for f in features]
    batch = from_features(features, np.zeros(2, np.int64), np.array([0, sizes[0]]), np.full(2, scale), ["0", "1"])
    with torch.no_grad():
        expected = model.eval()(batch)
    got = np.stack([p.logits for p in classifier.predict(clips, sample_rate=RATE, scale=scale)])
    assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_long_clip_averages_the_logits_of_half_overlapping_windows(classifier):
    seconds = np.arange(60 * RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * seconds) * (1 + np.sin(2 * np.pi * 0.1 * seconds))).astype(np.float32)
    prediction = classifier.predict([tone], sample_rate=RATE)[0]
    starts = [*range(0, len(tone) - WINDOW_SAMPLES, HOP_SAMPLES), len(tone) - WINDOW_SAMPLES]
    assert prediction.windows == len(starts) > 1
    windows = classifier.predict([tone[s : s + WINDOW_SAMPLES] for s in starts], sample_rate=RATE)
    assert all(w.windows == 1 for w in windows)  # a window is exactly max_frames: never cut again
    mean_logits = torch.from_numpy(np.stack([w.logits for w in windows]).mean(axis=0))
    assert np.allclose(prediction.probabilities, mean_logits.softmax(dim=0).numpy(), atol=1e-5)
    assert classifier.predict([tone[: WINDOW_SAMPLES + 159]], sample_rate=RATE)[0].windows == 1
    assert classifier.predict([tone[: WINDOW_SAMPLES + 16 * 160]], sample_rate=RATE)[0].windows == 2


def test_token_budget_picks_the_smallest_scale_that_fits(classifier):
    clip = noise(20.0, 3)

    def tokens(scale: float) -> int:
        return int(token_counts(len(clip), RATE, shift_for_scale(scale)).tokens)

    prediction = classifier.predict([clip], sample_rate=RATE, token_budget=600)[0]
    assert prediction.scale == 1.8
    assert tokens(1.8) <= 600 < tokens(1.6)
    assert prediction.windows > 1  # 1,110 frames at C = 1.8 still exceed max_frames 512
    assert classifier.predict([clip], sample_rate=RATE, token_budget=8)[0].scale == 4.0
    assert classifier.predict([noise(1.0, 4)], sample_rate=RATE, token_budget=600)[0].scale == 1.0
    assert classifier.predict([clip], sample_rate=RATE, scale=2.0)[0].scale == 2.0


def test_bad_inputs_are_refused_by_name(classifier, tmp_path):
    clip = noise(1.0, 5)
    with pytest.raises(ValueError, match="not both"):
        classifier.predict([clip], sample_rate=RATE, scale=2.0, token_budget=600)
    with pytest.raises(ValueError, match="input 0 is a waveform: pass its sample_rate"):
        classifier.predict([clip])
    with pytest.raises(AudioError, match="missing file.*absent.wav"):
        classifier.predict([tmp_path / "absent.wav"])
    with pytest.raises(ValueError, match="input 0 has shape"):
        classifier.predict([np.zeros((2, 100))], sample_rate=RATE)
    with pytest.raises(ValueError, match="max_tokens 128 cannot hold one window of 512 frames \\(256 tokens\\)"):
        classifier.predict([clip], sample_rate=RATE, max_tokens=128)
    with pytest.raises(ValueError, match="scale 9.0 is outside"):
        classifier.predict([clip], sample_rate=RATE, scale=9.0)
    with pytest.raises(TypeError, match="pass \\[x\\]"):
        classifier.predict(clip, sample_rate=RATE)
    assert classifier.predict([]) == []
