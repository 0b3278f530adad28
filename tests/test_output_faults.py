"""A full or read-only --out: exit 2 naming the path, no .partial left, a former shard set intact.
Runs on a 2 MB tmpfs mounted here (needs root and mount); skipped with the reason otherwise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shards import ShardDataset
from shards.inputs import write_manifest


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here (needs root and mount): {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def manifest(folder: Path, clips: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    for i in range(clips):
        sf.write(
            folder / f"c{i}.wav",
            (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32),
            16000,
            subtype="PCM_16",
        )
    return write_manifest(
        folder / f"rows{clips}.csv", [{"path": f"c{i}.wav", "label": "a", "split": "train"} for i in range(clips)]
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_full_disk_keeps_the_former_set_and_leaves_no_partial(small_disk, tmp_path, make_shards, capsys):
    out = small_disk / "shards"
    args = ["--out", str(out), "--backend", "local", "--quiet", "--shard-size", "64KiB"]
    assert make_shards.main(["--manifest", str(manifest(tmp_path, 4, 0.5))] + args) == 0
    before = snapshot(out)
    assert (
        make_shards.main(["--manifest", str(manifest(tmp_path, 40, 2.0)), "--overwrite"] + args) == 2
    )  # ~2.6 MB of audio
    err = capsys.readouterr().err
    assert str(out) in err and "No space left on device" in err
    assert snapshot(out) == before and len(ShardDataset(out).index("train")) == 4
    assert not [p for p in small_disk.rglob("*") if "partial" in p.name or p.name == ".building"]


def test_a_read_only_out_is_exit_2_naming_the_path(small_disk, tmp_path, make_shards, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = small_disk / "shards"
    code = make_shards.main(
        ["--manifest", str(manifest(tmp_path, 2, 0.5)), "--out", str(out), "--backend", "local", "--quiet"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "Read-only file system" in err and "Traceback" not in err
