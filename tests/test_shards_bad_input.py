"""Bad input never crashes make_shards and never costs a valid sample; each skip names a reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    rows = [
        {"path": f"mixed/{p.name}", "label": "a;b" if p.stem == "stereo44k" else "a"} for p in sorted(folder.iterdir())
    ]
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
    code = make_shards.main(
        ["--manifest", str(write_manifest(bad_folder)), "--out", str(out), "--backend", backend, "--quiet"]
    )
    assert code == 0
    assert all_keys(out) == GOOD
    skipped = skipped_by_name(out)
    for name, reason in EXPECTED_SKIPS.items():
        assert skipped.pop(name) == [reason], name
    assert sorted(skipped.pop("good_mono16k.wav")) == ["segment out of range"]
    assert skipped == {"good_22k.flac": ["invalid manifest row"]}  # the row with an empty label


def test_stereo_44k_is_downmixed_and_resampled_not_skipped(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    assert (
        make_shards.main(
            ["--manifest", str(write_manifest(bad_folder)), "--out", str(out), "--backend", "local", "--quiet"]
        )
        == 0
    )
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
    assert (
        make_shards.main(
            ["--manifest", str(write_manifest(bad_folder)), "--out", str(out), "--backend", "local", "--quiet"]
        )
        == 0
    )
    dataset = ShardDataset(out)
    split = next(s for s in dataset.splits if "good_mono16k__200-600ms" in dataset.index(s).column("key").to_pylist())
    audio, _ = dataset.read_sample(split, "good_mono16k__200-600ms")
    np.testing.assert_allclose(audio, tone(1.0, 16000)[3200:9600], atol=1 / 32768)


def test_folder_input_takes_labels_from_parent_folders(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    assert (
        make_shards.main(["--input", str(bad_folder.parent), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    )
    dataset = ShardDataset(out)
    assert dataset.labels == ["mixed"]
    assert all_keys(out) == {f"mixed_{k}" for k in GOOD if "__" not in k}
    assert set(skipped_by_name(out)) == set(EXPECTED_SKIPS) - {"missing.wav"}


def test_label_regex_on_file_names(bad_folder, tmp_path, make_shards):
    out = tmp_path / "out"
    args = [
        "--input",
        str(bad_folder),
        "--out",
        str(out),
        "--backend",
        "local",
        "--quiet",
        "--label-regex",
        r"^(?P<label>[a-z]+)",
    ]
    assert make_shards.main(args) == 0
    assert set(ShardDataset(out).labels) == {"good", "stereo", "vorbis", "mpeg"}


def test_no_valid_input_is_an_error_and_leaves_nothing(bad_folder, tmp_path, make_shards, capsys):
    for good in ("good_mono16k.wav", "good_22k.flac", "stereo44k.wav", "vorbis.ogg", "mpeg.mp3"):
        (bad_folder / good).unlink()
    out = tmp_path / "out"
    assert (
        make_shards.main(["--input", str(bad_folder.parent), "--out", str(out), "--backend", "local", "--quiet"]) == 2
    )
    assert "no valid input" in capsys.readouterr().err
    assert not out.exists()


def test_configuration_errors_exit_nonzero_with_a_clear_message(bad_folder, tmp_path, make_shards, capsys):
    assert (
        make_shards.main(["--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--backend", "local"])
        == 2
    )
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


def test_bad_values_are_skips_naming_the_manifest_line_and_the_reason(bad_folder, tmp_path, make_shards):
    (bad_folder / "folder.wav").mkdir()
    good = "mixed/good_mono16k.wav"
    rows = [
        {"path": good, "label": "a", "start": start, "end": end}
        for start, end in (("0", "inf"), ("0", "1e309"), ("nan", ""), ("-0.5", "0.5"), ("0.1", "abc"), ("0.6", "0.2"))
    ]
    rows += [{"path": "mixed/folder.wav", "label": "a"}, {"path": good, "label": "a"}]
    out, manifest = tmp_path / "out", write_rows(bad_folder.parent / "rows.csv", rows)
    assert make_shards.main(["--manifest", str(manifest), "--out", str(out), "--backend", "local", "--quiet"]) == 0
    details = sorted(s["detail"] for s in json.loads((out / "dataset.json").read_text())["skipped"])
    assert details == sorted(
        [
            f"{manifest}:2: end='inf' is not a finite number of seconds",
            f"{manifest}:3: end='1e309' is not a finite number of seconds",
            f"{manifest}:4: start='nan' is not a finite number of seconds",
            f"{manifest}:5: start='-0.5' must be >= 0 seconds",
            f"{manifest}:6: end='abc' is not a number of seconds",
            f"{manifest}:7: end=0.2 s is not after start=0.6 s",
            f"{manifest}:8: {bad_folder / 'folder.wav'} is a directory",
        ]
    )
    assert all_keys(out) == {"good_mono16k"}


def test_an_unreadable_file_is_permission_denied_not_a_system_error(tmp_path):
    """Root reads every file, so the probe runs in a child without the capability to override
    file permissions (`setpriv`); skipped where that cannot be arranged."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE in a child (a non-root run would need no setup)")
    locked = tmp_path / "locked.wav"
    sf.write(locked, tone(0.5, 16000), 16000, subtype="PCM_16")
    locked.chmod(0o000)
    code = f"from shards.audio import AudioError, probe\ntry: probe({str(locked)!r})\nexcept AudioError as e: print(e)"
    caps = "-dac_override,-dac_read_search"
    done = subprocess.run(
        ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 and "setpriv" in done.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {done.stderr[-300:]}")
    assert done.stdout.strip() == f"permission denied: {locked} cannot be read by this user", done.stderr[-2000:]


def test_a_duplicate_row_is_kept_once_and_listed_unless_asked_to_keep_both(bad_folder, tmp_path, make_shards, capsys):
    rows = [
        {"path": "mixed/good_mono16k.wav", "label": "a"},
        {"path": "mixed/stereo44k.wav", "label": "a"},
        {"path": "mixed/./good_mono16k.wav", "label": "a"},
        {"path": "mixed/good_mono16k.wav", "label": "a", "start": "0.5"},
    ]
    manifest = write_rows(bad_folder.parent / "rows.csv", rows)
    args = ["--manifest", str(manifest), "--backend", "local", "--quiet"]
    assert make_shards.main(args + ["--out", str(tmp_path / "once")]) == 0
    assert all_keys(tmp_path / "once") == {"good_mono16k", "stereo44k", "good_mono16k__500-endms"}
    skipped = json.loads((tmp_path / "once" / "dataset.json").read_text())["skipped"]
    assert [(s["reason"], s["detail"].split(";")[0]) for s in skipped] == [
        ("duplicate", f"{manifest}:4: same file and segment as {manifest}:2")
    ]
    assert "duplicates kept once: 1 row(s)" in capsys.readouterr().out
    assert make_shards.main(args + ["--out", str(tmp_path / "both"), "--keep-duplicates"]) == 0
    keys = all_keys(tmp_path / "both")
    assert len(keys) == 4 and sum(k.startswith("good_mono16k-") for k in keys) == 1


BAD = "bad"
SECONDS = [
    (None, None),
    ("", None),
    (0, 0.0),
    (0.1, 0.1),
    ("0.25", 0.25),
    (0.5, 0.5),
    (-1, BAD),
    ("-0.1", BAD),
    (float("inf"), BAD),
    (float("nan"), BAD),
    ("1e309", BAD),
    (10**400, BAD),
    ("abc", BAD),
    ([1], BAD),
    ({"s": 1}, BAD),
    (True, BAD),
    (5.0, BAD),
]  # (value in the manifest, what it means for a 0.5 s file)


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "path": st.sampled_from(
                    ["good.wav", "folder.wav", "missing.wav", "", None, 7, "bad\u0000name.wav", "text.wav"]
                ),
                "label": st.one_of(st.sampled_from(["a", "b;c", None, 3]), st.text(max_size=5)),
                "start": st.sampled_from(SECONDS),
                "end": st.sampled_from(SECONDS),
                "split": st.sampled_from(["train", "test", "", "no good!", None]),
            }
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_manifest_rows_never_crash_and_every_valid_row_is_kept(rows, tmp_path_factory, make_shards):
    work = tmp_path_factory.mktemp("property")
    sf.write(work / "good.wav", tone(0.5, 16000), 16000, subtype="PCM_16")
    (work / "folder.wav").mkdir()
    (work / "text.wav").write_text("not audio")
    manifest = work / "rows.jsonl"
    manifest.write_text(
        "".join(json.dumps(row | {"start": row["start"][0], "end": row["end"][0]}) + "\n" for row in rows)
    )
    expected = set()
    for row in rows:  # the oracle, written out independently: which rows must become samples
        (_, start), (_, end) = row["start"], row["end"]
        label = row["label"] if isinstance(row["label"], str) else "" if row["label"] is None else str(row["label"])
        if (
            row["path"] == "good.wav"
            and any(part.strip() for part in label.split(";"))
            and row["split"] != "no good!"
            and BAD not in (start, end)
            and (start or 0.0) < (0.5 if end is None else end)
        ):
            expected.add((start, end))
    code = make_shards.main(["--manifest", str(manifest), "--out", str(work / "out"), "--backend", "local", "--quiet"])
    assert code == (0 if expected else 2)
    if expected:
        dataset = ShardDataset(work / "out")
        assert {
            (r["start_s"], r["end_s"]) for split in dataset.splits for r in dataset.index(split).to_pylist()
        } == expected
