"""Shared fixtures: a real local Ray instance, a real S3-compatible server, the real FSDD recordings,
the make_shards job."""

from __future__ import annotations

import compileall
import importlib.util
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from object_store import FaultyProxy, S3Server, free_port, s3_environment

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("shards", "loaders", "elasticast", "jobs")  # the packages; each may import only those before it

# Ray's knobs for a suite of short runs (they reach every Ray instance the tests start, and the
# jobs they submit, through the environment): Ray Train's controller polls the workers every 0.2 s,
# not 2 s, so a run ends about 2 s sooner; no preemption-watcher actor (one Python process less per
# run: there is no spot instance to watch here) and no metrics callbacks; each node's dashboard
# agent samples its processes' usage every 60 s, not every 5 s (nobody reads it here).
RAY_TEST_KNOBS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
}
for _name, _value in RAY_TEST_KNOBS.items():
    os.environ.setdefault(_name, _value)

FSDD = Path(os.environ.get("ELASTICAST_FSDD", REPO.parent / "shared" / "data" / "fsdd" / "recordings"))


@pytest.fixture(scope="session")
def s3_port() -> int:
    """The port of the session's S3 server, chosen before either it or Ray starts: Ray's workers
    get its AWS_* variables whether or not the server is ever started."""
    return free_port()


@pytest.fixture(scope="session")
def s3_server(s3_port):
    """moto's S3 server on 127.0.0.1 for the whole session. The standard AWS_* variables point every
    s3:// URL of this process and its children at it (and `ray_local` gives them to Ray's workers)."""
    server = S3Server(port=s3_port)
    saved = {name: os.environ.get(name) for name in server.environment}
    os.environ.update(server.environment)
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


_BUCKETS = itertools.count()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket on the session's server, as its URL `s3://bucket-N`."""
    import s3fs

    name = f"bucket-{next(_BUCKETS)}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def faulty_s3(s3_server, monkeypatch):
    """`faulty_s3(fail_fraction, seed, poisoned)`: a `FaultyProxy` in front of the server, with
    AWS_ENDPOINT_URL pointing at it until the test ends (fsspec's cached clients are dropped on
    both sides, since they keep the endpoint they were made with)."""
    import s3fs

    proxies = []

    def start(fail_fraction: float = 0.0, seed: int = 0, poisoned: tuple[str, ...] = ()) -> FaultyProxy:
        proxy = FaultyProxy(s3_server.port, fail_fraction, seed, poisoned)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        return proxy

    yield start
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def ray_local(s3_port):
    """One local Ray instance (2 CPUs) for the whole session; jobs run in-process reuse it. Its
    workers see the session's S3 server (`s3_server`), which need not run for tests without S3."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": s3_environment(s3_port)},
        ignore_reinit_error=True,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs (room for one checkpoint of the 1-block model, 7.8 MB, not for two), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def load_script(relative: str):
    """A script of the repository as a module (jobs call `main(argv)` like the command line).
    It is not registered in sys.modules, so Ray pickles its functions by value for workers."""
    spec = importlib.util.spec_from_file_location(Path(relative).stem + "_script", REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_shards():
    from jobs import make_shards

    return make_shards


@pytest.fixture(scope="session")
def train_job():
    from jobs import train

    return train


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (set ELASTICAST_FSDD to their folder)")
    return FSDD


def write_fsdd_manifest(recordings: Path, path: Path, every: int = 1) -> Path:
    """The FSDD example's manifest writer (conventional split: takes 0-4 test)."""
    return load_script("examples/fsdd_digits/manifest.py").digit_manifest(recordings, path, every)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(work)`'s shard set, built once per `make test`: the xdist workers share the parent of
    their temporary folders, and the first to take the lock builds there (pytest-xdist's recipe for
    session fixtures); the others wait and read it. Returns `work / "shards"`."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    work = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / f"once-{name}"
    with FileLock(f"{work}.lock"):
        if not (work / ".built").exists():
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            build(work)
            (work / ".built").touch()
    return work / "shards"


@pytest.fixture(scope="session")
def fsdd_shards(tmp_path_factory, fsdd_dir, make_shards) -> Path:
    """All 3,000 FSDD recordings sharded once per run of the suite, in-process (3 s of CPU; the
    Ray backend takes 11 s here, and tests/test_shards_bad_input.py and test_shards_storage.py
    build on it)."""

    def build(work: Path) -> None:
        manifest = write_fsdd_manifest(fsdd_dir, work / "manifest.csv")
        flags = ["--shard-size", "2MiB", "--backend", "local", "--quiet"]
        assert make_shards.main(["--manifest", str(manifest), "--out", str(work / "shards"), *flags]) == 0

    return built_once(tmp_path_factory, "fsdd", build)


@pytest.fixture(scope="session")
def fsdd_small_shards(tmp_path_factory, fsdd_dir, make_shards) -> Path:
    """Every 5th FSDD recording (600: all digits and speakers), several shards, for training jobs."""

    def build(work: Path) -> None:
        manifest = write_fsdd_manifest(fsdd_dir, work / "manifest.csv", every=5)
        flags = ["--shard-size", "300KiB", "--backend", "local", "--quiet"]
        assert make_shards.main(["--manifest", str(manifest), "--out", str(work / "shards"), *flags]) == 0

    return built_once(tmp_path_factory, "fsdd_small", build)


def kaldi_reference_fbank(wave, rate: int, shift_ms: float = 10.0):
    """The paper's fbank call, verbatim, as float64 numpy: the reference for feature values."""
    import torch
    from torchaudio.compliance import kaldi

    x = torch.as_tensor(wave, dtype=torch.float32)
    return (
        kaldi.fbank(
            (x - x.mean()).unsqueeze(0),
            htk_compat=True,
            sample_frequency=rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_shift=shift_ms,
            frame_length=25,
        )
        .double()
        .numpy()
    )


# Synthetic clips of exact lengths: clip i lasts PATCHES[i] patches of 16 frames at C = 1 (plus
# a few frames the 16-frame floor drops), so token counts, packings and round-robin dealing are
# known by hand. Audio depends on the length only: clips of equal length are identical, which
# tells keyed randomness (SpecAugment) from content. Labels cycle through SYNTHETIC_LABELS.
SYNTHETIC_PATCHES = (6, 4, 7, 3, 5, 5, 2, 8) * 3 + (1,)
SYNTHETIC_LABELS = ("hum", "tone", "whistle")
SYNTHETIC_RATE = 16000


def synthetic_num_samples(patches: int, extra_frames: int = 5) -> int:
    """Samples giving 16 * patches + extra_frames Kaldi frames (25 ms window, 10 ms shift)."""
    return 400 + (16 * patches + extra_frames - 1) * 160


def write_synthetic_manifest(folder: Path, labels: list[str]) -> Path:
    """One WAV per entry of `labels` (";" for several), lengths from SYNTHETIC_PATCHES."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True)
    rows = ["path,label,split"]
    for i, label in enumerate(labels):
        patches = SYNTHETIC_PATCHES[i % len(SYNTHETIC_PATCHES)]
        t = np.arange(synthetic_num_samples(patches)) / SYNTHETIC_RATE
        wave = 0.3 * np.sin(2 * np.pi * 110 * patches * t) + 0.05 * np.random.default_rng(patches).standard_normal(
            len(t)
        )
        sf.write(folder / f"clip{i:02d}.wav", wave.astype(np.float32), SYNTHETIC_RATE, subtype="PCM_16")
        rows.append(f"clip{i:02d}.wav,{label},train")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def build_synthetic_shards(make_shards, work: Path, labels: list[str] | None = None, *flags: str) -> Path:
    """The synthetic clips (labels cycling through SYNTHETIC_LABELS unless given), sharded
    in-process by the make_shards job with its extra `flags`."""
    labels = labels or [SYNTHETIC_LABELS[i % len(SYNTHETIC_LABELS)] for i in range(len(SYNTHETIC_PATCHES))]
    manifest = write_synthetic_manifest(work / "audio", labels)
    out = work / "shards"
    assert (
        make_shards.main(["--manifest", str(manifest), "--out", str(out), "--backend", "local", "--quiet", *flags]) == 0
    )
    return out


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory, make_shards) -> Path:
    """The synthetic clips, single-label, in shards of 4 samples (no Ray)."""
    return build_synthetic_shards(make_shards, tmp_path_factory.mktemp("synthetic"), None, "--shard-samples", "4")


def same_content(a, b) -> bool:
    """Two batches hold the same values: patches, or the waveforms shipped to featurize on the
    device with their layout and keyed draws, the same segments and positions, and the same mixup
    targets."""
    import torch

    tensors = ("patches", "segment_ids", "freq_pos", "time_pos")
    if not all(torch.equal(getattr(a, name), getattr(b, name)) for name in tensors):
        return False
    if (a.targets is None) != (b.targets is None) or (a.targets is not None and not torch.equal(a.targets, b.targets)):
        return False
    if a.audio is None or b.audio is None:
        return a.audio is b.audio
    from loaders.batch import DRAWS

    drawn = ("samples", "layout", *DRAWS)
    pairs = [(getattr(a.audio, name), getattr(b.audio, name)) for name in drawn]
    return all(x is y if x is None or y is None else torch.equal(x, y) for x, y in pairs)


# The training recipe's options (issue 24) that the stream's guarantees (exactly once, equal steps,
# bitwise resume, keyed batches) must survive, with each packer and in both featurize modes: tests
# parametrise by these.
RECIPE_OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"packing": "greedy", "token_dropout": 0.1, "random_cut": 64, "noise": True}, id="greedy-recipe"),
    pytest.param(
        {
            "packing": "first_fit",
            "token_dropout_max": 0.5,
            "random_cut": 32,
            "noise": True,
            "time_mask": 24,
            "mixup": 0.5,
        },
        id="first_fit-recipe",
    ),
]
MIXUP_BALANCED = pytest.param(
    {"mixup": 0.5, "sampling": "balanced", "freq_mask": 20}, id="mixup-balanced"
)  # one source


# Markers by what a test needs (`make test-fast` runs the tests that need neither): `ray` for a
# local Ray instance or cluster, `fsdd` for the real recordings; `slow` is set by hand on tests
# that take more than a few seconds on 2 cores for another reason.
_MARKERS_BY_FIXTURE = {"ray_local": "ray", "two_node_cluster": "ray", "fsdd_dir": "fsdd", "s3_server": "s3"}


# `make test` runs two pytest-xdist workers (`--dist loadgroup`). Each worker that runs a Ray test
# starts its own local Ray instance (`ray_local`, per worker process), so the Ray Train runs, the
# suite's longest tests, spread over both workers; the module-scoped two-node cluster is one group.
# The long tests are sent first, so that the suite does not end on one of them while the other
# worker idles.
_GROUPS_BY_FIXTURE = {"two_node_cluster": "two_node_cluster"}
_LONG_FIXTURES = ("train_job", "two_node_cluster")


def _long(item) -> bool:
    return item.get_closest_marker("slow") is not None or any(f in item.fixturenames for f in _LONG_FIXTURES)


def pytest_configure(config):
    """Byte-compile the project's packages once, before the workers start: every Ray worker and
    subprocess of the suite imports them, and where PYTHONDONTWRITEBYTECODE is set (this machine,
    CI) each would compile them again (about 0.25 s of CPU each)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for package in LAYERS:
            compileall.compile_dir(REPO / package, quiet=1)


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marker in _MARKERS_BY_FIXTURE.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)
        for fixture, group in _GROUPS_BY_FIXTURE.items():
            if fixture in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: not _long(item))
