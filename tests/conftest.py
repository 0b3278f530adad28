"""Shared fixtures: a real local Ray instance, the real FSDD recordings, the make_shards job."""
from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FSDD = Path(os.environ.get("ELASTICAST_FSDD", REPO.parent / "shared" / "data" / "fsdd" / "recordings"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole session; jobs run in-process reuse it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def make_shards():
    """The `jobs/make_shards.py` module, so tests call its `main(argv)` like the command line."""
    spec = importlib.util.spec_from_file_location("make_shards_job", REPO / "jobs" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (set ELASTICAST_FSDD to their folder)")
    return FSDD


def write_fsdd_manifest(recordings: Path, path: Path, limit: int | None = None) -> Path:
    """The conventional FSDD split: takes 0-4 test, 5-49 train; label = spoken digit."""
    files = sorted(recordings.glob("*.wav"))[:limit]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for file in files:
            digit, _speaker, take = file.stem.split("_")
            writer.writerow([str(file), digit, "test" if int(take) < 5 else "train"])
    return path


@pytest.fixture(scope="session")
def fsdd_shards(tmp_path_factory, fsdd_dir, ray_local, make_shards) -> Path:
    """All 3,000 FSDD recordings sharded once per session on the Ray backend."""
    work = tmp_path_factory.mktemp("fsdd")
    manifest = write_fsdd_manifest(fsdd_dir, work / "manifest.csv")
    out = work / "shards"
    code = make_shards.main(["--manifest", str(manifest), "--out", str(out), "--shard-size", "2MB", "--quiet"])
    assert code == 0
    return out
