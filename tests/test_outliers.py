"""One outlier never poisons a set: long files are cut (or skipped) when sharded, the loader crops
the waveform before the fbank, and the statistics cap frames per source and leave out silence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from loaders import StreamConfig
from loaders.assemble import FeatureConfig, SampleSpec, read_audio
from loaders.feature_spec import FeatureSpec
from loaders.features import fbank, kaldi_fbank, samples_needed, spectrogram
from loaders.stats import fbank_stats
from loaders.tokens import token_counts
from shards import ShardDataset
from shards.audio import pcm16_float
from shards.inputs import write_manifest

from conftest import kaldi_reference_fbank

REPO = Path(__file__).resolve().parents[1]
GB = 2**30


def noise(seconds: float, rate: int = 16000, seed: int = 0, loudness: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * loudness).astype(np.float32)


@pytest.mark.parametrize("compression, scale", [("shift", 1.4), ("avgpool", 2)])
def test_spectrogram_crops_the_waveform_before_the_fbank(compression, scale):
    wave = noise(40.0)
    need = samples_needed(len(wave), 16000, scale, compression=compression, max_frames=256, capacity=2048)
    assert need < len(wave)
    wave[need:] = np.nan  # audio past the crop must never reach the fbank
    spec = spectrogram(wave, 16000, scale, compression=compression, mean=-6.0, std=4.0, max_frames=256, capacity=2048)
    kept = wave[:need]
    shift, pool = (14.0, 1) if compression == "shift" else (10.0, 2)
    reference = kaldi_fbank(kept, 16000, shift)
    reference = reference[: reference.shape[0] // pool * pool].reshape(-1, pool, 128).mean(dim=1)
    assert spec.shape == (256, 128) and torch.isfinite(spec).all()
    assert (spec - (reference[:256] + 6.0) / 8.0).abs().max() <= 1e-3


def test_a_clip_that_is_not_cropped_gives_the_very_same_numbers_as_before():
    wave = noise(3.3)
    kept = int(token_counts(len(wave), 16000, 10.0, max_frames=3072).tokens) // 8 * 16
    assert samples_needed(len(wave), 16000, max_frames=3072) == len(wave)
    before = (fbank(wave, 16000)[:kept] - (-6.0)) / (2 * 4.0)  # the full clip's fbank, then the frames kept
    assert torch.equal(spectrogram(wave, 16000, mean=-6.0, std=4.0, max_frames=3072), before)


def test_the_loader_decodes_only_the_audio_it_keeps(tmp_path, make_shards):
    sf.write(tmp_path / "long.wav", noise(60.0), 16000, subtype="PCM_16")
    rows = write_manifest(tmp_path / "rows.csv", [{"path": "long.wav", "label": "a", "split": "train"}])
    out = tmp_path / "out"
    assert make_shards.main(["--manifest", str(rows), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    row = ShardDataset(out).index("train").to_pylist()[0]
    stream = StreamConfig(rows_per_batch=1, max_tokens=2048, max_frames=128, backend="local")
    config = FeatureConfig(stream, str(out / "train"), 1, FeatureSpec(16000, 0.0, 0.5))
    spec = SampleSpec(
        row["key"],
        row["shard"],
        row["offset"],
        row["nbytes"],
        row["num_samples"],
        (0,),
        0,
        0,
        64,
        0,
        1.0,
        row["xxh3_64"],
    )
    audio, failed, _ = read_audio([spec], config)
    full, _ = ShardDataset(out).read_sample("train", row["key"])
    assert failed == [] and len(audio[0]) == 400 + 127 * 160 < len(full)
    assert audio[0].dtype == np.int16  # as stored (what featurize="device" ships)
    assert np.array_equal(pcm16_float(audio[0]), full[: 400 + 127 * 160])


def test_statistics_cap_frames_per_source_and_leave_out_silence():
    short = [(noise(0.5, seed=i, loudness=0.05), 16000, f"clip{i}") for i in range(6)]
    long = [
        (noise(30.0, seed=99, loudness=1.0), 16000, "long.wav"),
        (noise(30.0, seed=98, loudness=1.0), 16000, "long.wav"),
    ]
    silent = [(np.zeros(16000 * 60, np.float32), 16000, "silent.wav")]
    stats = fbank_stats(short + long + silent, frames_per_source=100)
    values = [kaldi_fbank(w, 16000).double() for w, _, _ in short] + [
        kaldi_fbank(long[0][0][: 400 + 99 * 160], 16000).double()
    ]
    reference = torch.cat(values)
    assert stats["mean"] == pytest.approx(float(reference.mean()), abs=1e-4)
    assert stats["std"] == pytest.approx(float(reference.std(unbiased=False)), abs=1e-4)
    assert (stats["samples"], stats["silent"], stats["over_source_cap"]) == (7, 1, 1)


def test_max_duration_cuts_long_files_into_equal_segments_or_skips_them(tmp_path, make_shards):
    wave = noise(25.0)
    sf.write(tmp_path / "long.wav", wave, 16000, subtype="PCM_16")
    sf.write(tmp_path / "short.wav", noise(2.0, seed=1), 16000, subtype="PCM_16")
    rows = write_manifest(
        tmp_path / "rows.csv", [{"path": p, "label": "a", "split": "train"} for p in ("long.wav", "short.wav")]
    )
    common = ["--manifest", str(rows), "--backend", "local", "--quiet", "--max-duration", "10"]
    assert make_shards.main(common + ["--out", str(tmp_path / "cut")]) == 0
    dataset = ShardDataset(tmp_path / "cut")
    keys = sorted(k for k in dataset.index("train").column("key").to_pylist() if k.startswith("long"))
    assert keys == ["long__0-8333ms", "long__16666-25000ms", "long__8333-16666ms"]
    pieces = [
        dataset.read_sample("train", k)[0] for k in sorted(keys, key=lambda k: int(k.split("__")[1].split("-")[0]))
    ]
    assert np.abs(np.concatenate(pieces) - wave).max() <= 1 / 32768
    assert make_shards.main(common + ["--out", str(tmp_path / "skip"), "--long-clips", "skip"]) == 0
    meta = ShardDataset(tmp_path / "skip").meta
    assert [(Path(s["path"]).name, s["reason"]) for s in meta["skipped"]] == [("long.wav", "too long")]
    assert "over --max-duration 10 s" in meta["skipped"][0]["detail"] and "rows.csv:2" in meta["skipped"][0]["detail"]


CHILD_BUILD = """
import json, resource, sys
from jobs import make_shards
code = make_shards.main(sys.argv[1:])
print(json.dumps({"code": code, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""
CHILD_EPOCH = """
import json, resource, sys
from loaders import PackedStream
stream = PackedStream(sys.argv[1], rows_per_batch=2, max_tokens=2048, buffer=64, backend="local")
samples = sum(batch.num_samples for batch in stream.epoch(0))
print(json.dumps({"samples": samples, "failed": stream.stats[0]["failed"],
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python (same PYTHONPATH) and read its last line: its own peak RSS."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


def test_a_three_hour_silent_file_among_99_clips_moves_nothing_and_stays_under_2gb(fsdd_dir, tmp_path, make_shards):
    clips = sorted(fsdd_dir.glob("*.wav"))[::30][:99]
    rows = [{"path": str(p), "label": p.name[0], "split": "train"} for p in clips]
    with sf.SoundFile(tmp_path / "silence.wav", "w", 16000, 1, subtype="PCM_16") as handle:
        for _ in range(180):
            handle.write(np.zeros(16000 * 60, np.int16))
    plain = tmp_path / "plain"
    assert (
        make_shards.main(
            [
                "--manifest",
                str(write_manifest(tmp_path / "plain.csv", rows)),
                "--out",
                str(plain),
                "--backend",
                "local",
                "--quiet",
            ]
        )
        == 0
    )
    with_silence = write_manifest(
        tmp_path / "silence.csv", rows + [{"path": str(tmp_path / "silence.wav"), "label": "s", "split": "train"}]
    )
    out = tmp_path / "outlier"
    build = child(CHILD_BUILD, "--manifest", str(with_silence), "--out", str(out), "--backend", "local", "--quiet")
    assert build["code"] == 0 and build["peak_rss"] < 2 * GB
    before, after = ShardDataset(plain).fbank_stats, ShardDataset(out).fbank_stats
    meta = ShardDataset(out).meta
    keys = ShardDataset(out).index("train").column("key").to_pylist()
    segments = [k for k in keys if "silence__" in k]
    # the reference: the 99 clips as stored, each cut to the set's frame cap (it grew with the
    # silent segments' lengths), through torchaudio's Kaldi fbank; the silence adds nothing
    # (counting it would move the mean by 2 % and the std by 1.9 %)
    cap = after["frames_per_source"]
    reference = np.concatenate(
        [
            kaldi_reference_fbank(ShardDataset(out).read_sample("train", key)[0][: 400 + (cap - 1) * 160], 16000)
            for key in keys
            if key not in segments
        ]
    )
    assert (after["mean"], after["std"]) == pytest.approx((reference.mean(), reference.std()), abs=1e-4)
    assert (after["samples"], after["silent"]) == (99, 18)
    for name in ("mean", "std"):
        assert after[name] == pytest.approx(before[name], rel=0.005)  # only the cap moved: 78 -> 84 frames
    assert len(segments) == 18 and sorted(meta["silent"]) == sorted(segments)
    assert "18 clip(s) digitally silent" in build["stderr"] and "over 10x the median duration" in build["stderr"]
    epoch = child(CHILD_EPOCH, str(out / "train"))
    assert (epoch["samples"], epoch["failed"]) == (99 + 18, 0) and epoch["peak_rss"] < 2 * GB
