"""Bad input never crashes make_shards and never costs a valid sample; each skip names a reason."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shards import ShardDataset
from shards.audio import resample
from shards.inputs import write_manifest as write_rows

GOOD = {"good_mono16k", "good_22k", "stereo44k", "vorbis", "mpeg", "good_mono16k__200-600ms"}
EXPECTED_SKIPS = {
    "truncated.wav": "truncated file",
    "empty.wav": "unreadable audio",
    "text.wav": "unreadable audio",
    "nan.wav": "non-finite samples",
    "zero_frames.wav": "empty audio",
    "missing.wav": "missing file",
}


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    waves = [0.3 * np.sin(2 * np.pi * (440 + 110 * c) * t) for c in range(channels)]
    return np.stack(waves, axis=1).astype(np.float32) if channels > 1 else waves[0].astype(np.float32)


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "audio" / "mixed"
    folder.mkdir(parents=True)
    sf.write(folder / "good_mono16k.wav", tone(1.0, 16000), 16000, subtype="PCM_16")
    sf.write(folder / "good_22k.flac", tone(0.7, 22050), 22050)
    sf.write(folder / "stereo44k.wav", tone(1.3, 44100, channels=2), 44100, subtype="PCM_16")
    sf.write(folder / "vorbis.ogg", tone(0.8, 16000), 16000, format="OGG", subtype="VORBIS")
    sf.write(folder / "mpeg.mp3", tone(0.8, 16000), 16000, format="MP3", subtype="MPEG_LAYER_III")
    sf.write(tmp_path / "whole.wav", tone(2.0, 16000), 16000, subtype="PCM_16")
    whole = (tmp_path / "whole.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is a text file with an audio extension\n" * 20)
    nan = tone(0.5, 16000)
    nan[100:110] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "zero_frames.wav", np.zeros(0, np.float32), 16000)
    return folder


def write_manifest(folder: Path) -> Path:
    rows = [{"path": f"mixed/{p.name}", "label": "a;b" if p.stem == "stereo44k" else "a"} for p in sorted(folder.iterdir())]
    rows += [
        {"path": "mixed/missing.wav", "label": "a"},
        {"path": "mixed/good_mono16k.wav", "label": "b", "start": "0.2", "end": "0.6"},
        {"path": "mixed/good_mono16k.wav", "label": "b", "start": "0.5", "end": "5.0"},
        {"path": "mixed/good_22k.flac", "label": ""},
    ]
    return write_rows(folder.parent / "rows.csv", rows)


def skipped_by_name(out: Path) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for skip in json.loads((out / "dataset.json").read_text())["skipped"]:
        reasons.setdefault(Path(skip["path"]).name, []).append(skip["reason"])
    return reasons


def all_keys(out: Path) -> set[str]:
    dataset = ShardDataset(out)
    return {key for split in dataset.splits for key in dataset.index(split).column("key").to_pylist()}


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_manifest_with_bad_rows_keeps_every_good_sample(bad_folder, tmp_path, make_shards, backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_local")
    out = tmp_path / "out"
    code = make_shards.main(["--manifest", str(write_manifest(bad_folder)), "--out", str(out), "--backend", backend, "--quiet"])
    assert code == 0
    assert all_keys(out) == GOOD
    skipped = skipped_by_name(out)
    for name, reason in EXPECTED_SKIPS.items():
        assert skipped.pop(name) == [reason], name
    assert sorted(skipped.pop("good_mono16k.wav")) == ["segment out of range"]
    assert skipped == {"good_22k.flac": ["invalid manifest row"]}  # the row with an empty label


def test_stereo_44k_is_downmixed_and_resampled_not_skipped(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    assert make_shards.main(["--manifest", str(write_manifest(bad_folder)), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    dataset = ShardDataset(out)
    split = next(s for s in dataset.splits if "stereo44k" in dataset.index(s).column("key").to_pylist())
    row = next(r for r in dataset.index(split).to_pylist() if r["key"] == "stereo44k")
    source, rate = sf.read(bad_folder / "stereo44k.wav", dtype="float32")
    expected = resample(source.mean(axis=1), rate, 16000)
    audio, stored_rate = dataset.read_sample(split, "stereo44k")
    assert stored_rate == 16000 and row["num_samples"] == len(expected) == len(audio)
    assert np.abs(audio - expected).max() <= 1 / 32768
    assert row["labels"] == ["a", "b"] and dataset.meta["multi_label"] is True


def test_segments_cut_the_requested_span(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    assert make_shards.main(["--manifest", str(write_manifest(bad_folder)), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    dataset = ShardDataset(out)
    split = next(s for s in dataset.splits if "good_mono16k__200-600ms" in dataset.index(s).column("key").to_pylist())
    audio, _ = dataset.read_sample(split, "good_mono16k__200-600ms")
    np.testing.assert_allclose(audio, tone(1.0, 16000)[3200:9600], atol=1 / 32768)


def test_folder_input_takes_labels_from_parent_folders(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    assert make_shards.main(["--input", str(bad_folder.parent), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    dataset = ShardDataset(out)
    assert dataset.labels == ["mixed"]
    assert all_keys(out) == {f"mixed_{k}" for k in GOOD if "__" not in k}
    assert set(skipped_by_name(out)) == set(EXPECTED_SKIPS) - {"missing.wav"}


def test_label_regex_on_file_names(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    args = ["--input", str(bad_folder), "--out", str(out), "--backend", "local", "--quiet", "--label-regex", r"^(?P<label>[a-z]+)"]
    assert make_shards.main(args) == 0
    assert set(ShardDataset(out).labels) == {"good", "stereo", "vorbis", "mpeg"}


def test_no_valid_input_is_an_error_and_leaves_nothing(bad_folder, tmp_path, make_shards, capsys):
    for good in ("good_mono16k.wav", "good_22k.flac", "stereo44k.wav", "vorbis.ogg", "mpeg.mp3"):
        (bad_folder / good).unlink()
    out = tmp_path / "out"
    assert make_shards.main(["--input", str(bad_folder.parent), "--out", str(out), "--backend", "local", "--quiet"]) == 2
    assert "no valid input" in capsys.readouterr().err
    assert not out.exists()


def test_configuration_errors_exit_nonzero_with_a_clear_message(bad_folder, tmp_path, make_shards, capsys):
    assert make_shards.main(["--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--backend", "local"]) == 2
    assert "nowhere" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep me")
    args = ["--input", str(bad_folder.parent), "--out", str(taken), "--backend", "local", "--quiet"]
    assert make_shards.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert make_shards.main(args + ["--overwrite"]) == 2
    assert "does not look like a shard set" in capsys.readouterr().err
    assert (taken / "precious.txt").read_text() == "keep me"
    manifest = tmp_path / "nolabel.csv"
    manifest.write_text("path,split\nx.wav,train\n")
    assert make_shards.main(["--manifest", str(manifest), "--out", str(tmp_path / "o2"), "--backend", "local"]) == 2
    assert "lacks column(s) ['label']" in capsys.readouterr().err


def test_overwrite_replaces_a_former_shard_set(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    args = ["--input", str(bad_folder.parent), "--out", str(out), "--backend", "local", "--quiet"]
    assert make_shards.main(args) == 0
    assert make_shards.main(args) == 2
    assert make_shards.main(args + ["--overwrite"]) == 0
    assert all_keys(out) == {f"mixed_{k}" for k in GOOD if "__" not in k}
