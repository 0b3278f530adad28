"""Checkpoints know their model and features: `Classifier` serves AST and avgpool checkpoints
with the features they were trained on (checked against torchaudio's Kaldi fbank), and files
written before the model kind was recorded still load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elasticast import Classifier, load_checkpoint, model_from_checkpoint, preset, save_checkpoint
from elasticast.ast_baseline import ASTBaseline
from elasticast.checkpoint import make_model
from loaders.batch import from_features
from loaders.feature_spec import FeatureSpec
from loaders.features import patchify

from conftest import kaldi_reference_fbank

RATE = 16000
LABELS = ["a", "b", "c"]
MEAN, STD = -6.0, 3.5


def tiny(kind: str, **model_args):
    torch.manual_seed(0)
    return make_model(kind, preset("tiny", num_classes=3, depth=2, max_frames=512), **model_args).eval()


def clip(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = np.sin(2 * np.pi * (300 + 200 * seed) * t)
    return (0.3 * tone + 0.05 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def reference_features(wave: np.ndarray, shift_ms: float, pool: int, frames: int, mean: float = MEAN) -> torch.Tensor:
    """The paper's recipe written out: Kaldi fbank of the mean-removed wave, C frames averaged,
    whole 16-frame patches at most `frames`, then (x - mean) / (2 * std)."""
    spec = torch.from_numpy(kaldi_reference_fbank(wave, RATE, shift_ms)).float()
    spec = F.avg_pool1d(spec.T[None], pool)[0].T if pool > 1 else spec
    kept = min(spec.shape[0] // 16 * 16, frames)
    return (spec[:kept] - mean) / (2 * STD)


def logits_on(model, spec: torch.Tensor) -> torch.Tensor:
    batch = from_features([patchify(spec)], np.array([0]), np.array([0]), np.array([1.0]), ["x"])
    with torch.no_grad():
        return model(batch)[0]


@pytest.mark.parametrize(
    ("kind", "compression", "scale", "shift_ms", "pool"),
    [
        ("ast", "shift", 1.0, 10.0, 1),
        ("ast", "shift", 2.0, 20.0, 1),
        ("elasticast", "shift", 2.4, 24.0, 1),
        ("elasticast", "avgpool", 2.0, 10.0, 2),
        ("elasticast", "avgpool", 3.0, 10.0, 3),
    ],
)
def test_classifier_serves_each_checkpoint_with_its_training_features(
    tmp_path, kind, compression, scale, shift_ms, pool
):
    model = tiny(kind, **({"target_frames": 128} if kind == "ast" else {}))
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, LABELS, FeatureSpec(RATE, MEAN, STD, compression, 512))
    classifier = Classifier.from_checkpoint(path)
    wave = clip(0.9, 1)  # under one window: one whole-clip input
    predicted = classifier.predict([wave], sample_rate=RATE, scale=scale)[0]
    expected = logits_on(model, reference_features(wave, shift_ms, pool, 512))
    assert predicted.windows == 1
    assert np.allclose(predicted.logits, expected.numpy(), atol=2e-3)
    # what a classifier blind to the checkpoint would feed: frame-shift C, or the wrong statistics
    other = (
        reference_features(wave, 10.0 * scale, 1, 512)
        if pool > 1
        else reference_features(wave, shift_ms, 1, 512, mean=0.0)
    )
    assert not np.allclose(predicted.logits, logits_on(model, other).numpy(), atol=2e-3), "the features must matter"


def test_ast_windows_are_its_training_size_and_avgpool_takes_whole_scales(tmp_path):
    """A 3 s clip is 298 frames at C = 1: AST trained at 128 frames sees 128-frame windows at a
    64-frame hop, the last one ending at the clip's end (the module docstring's arithmetic)."""
    ast = tiny("ast", target_frames=128)
    classifier = Classifier(ast, LABELS, FeatureSpec(RATE, MEAN, STD))
    wave = clip(3.0, 2)
    window = 400 + (128 - 1) * 160
    starts = [*range(0, len(wave) - window, 64 * 160), len(wave) - window]
    expected = torch.stack(
        [logits_on(ast, reference_features(wave[s : s + window], 10.0, 1, 128)) for s in starts]
    ).mean(0)
    predicted = classifier.predict([wave], sample_rate=RATE)[0]
    assert predicted.windows == len(starts) == 4
    assert np.allclose(predicted.logits, expected.numpy(), atol=2e-3)
    pooled = Classifier(tiny("elasticast"), LABELS, FeatureSpec(RATE, MEAN, STD, "avgpool"))
    with pytest.raises(ValueError, match="whole scales"):
        pooled.predict([wave], sample_rate=RATE, scale=1.5)
    assert pooled.predict([wave], sample_rate=RATE, token_budget=100)[0].scale in (1.0, 2.0, 3.0, 4.0)


def test_model_from_checkpoint_rebuilds_the_kind_and_its_settings(tmp_path):
    ast = tiny("ast", target_frames=256, pooling="mean")
    save_checkpoint(tmp_path / "ast.pt", ast, LABELS, FeatureSpec(RATE, MEAN, STD), extra={"epoch": 2})
    loaded = model_from_checkpoint(tmp_path / "ast.pt")
    assert isinstance(loaded, ASTBaseline) and (loaded.target_frames, loaded.pooling) == (256, "mean")
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(ast.state_dict().values(), loaded.state_dict().values()))
    assert load_checkpoint(tmp_path / "ast.pt").extra == {"epoch": 2}


def test_version_1_files_still_load(tmp_path):
    """The format before the model kind and features were recorded (as jobs/train.py wrote it)."""
    ast = tiny("ast", target_frames=128)
    train_config = {"model": "ast", "target_frames": 128, "pooling": "cls", "max_frames": 512}
    torch.save(
        {
            "format": "elasticast-checkpoint",
            "format_version": 1,
            "config": dataclasses.asdict(ast.config),
            "state_dict": ast.state_dict(),
            "labels": LABELS,
            "fbank": {"mean": MEAN, "std": STD},
            "sample_rate": RATE,
            "multi_label": False,
            "compression": "shift",
            "extra": {"train_config": train_config},
        },
        tmp_path / "v1.pt",
    )
    checkpoint = load_checkpoint(tmp_path / "v1.pt")
    assert checkpoint.kind == "ast" and checkpoint.features == FeatureSpec(RATE, MEAN, STD, "shift", 512)
    wave = clip(0.5, 3)
    expected = logits_on(ast, reference_features(wave, 10.0, 1, 512))
    assert np.allclose(
        Classifier.from_checkpoint(tmp_path / "v1.pt").predict([wave], sample_rate=RATE)[0].logits, expected, atol=2e-3
    )
