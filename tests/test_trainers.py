"""Every trainer recipe of the README and docs/trainers.md ("Use it in your trainer") trains on real FSDD shards:
the plain loop, a DataLoader with workers, a lightning.Trainer, an Accelerate loop, and a
map-style dataset through PackingSampler; each snippet shown is a piece of the file run here."""

from __future__ import annotations

import re
import textwrap
from collections import Counter

import pytest

from elasticast.training import TrainConfig
from loaders import PackedStream
from loaders.threads import torch_threads

from conftest import REPO, load_script, write_fsdd_manifest


@pytest.fixture(scope="module")
def shards(tmp_path_factory, fsdd_dir, make_shards):
    """Every 40th FSDD recording (75), several shards."""
    work = tmp_path_factory.mktemp("trainers")
    manifest = write_fsdd_manifest(fsdd_dir, work / "manifest.csv", every=40)
    out = work / "shards"
    assert (
        make_shards.main(
            ["--manifest", str(manifest), "--out", str(out), "--shard-size", "100KiB", "--backend", "local", "--quiet"]
        )
        == 0
    )
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """The model steps on one torch thread: the 2-core test machine runs other tests beside."""
    with torch_threads(1):
        yield


def config_for(shards, featurize: str = "loader") -> TrainConfig:
    return TrainConfig(
        shards=str(shards), epochs=2, rows_per_batch=2, max_tokens=128, max_frames=128, buffer=32, featurize=featurize
    )


def train_keys(shards) -> set[str]:
    return set(PackedStream(shards / "train", rows_per_batch=1, backend="local").index["key"])


def once_each(keys, expected: set[str]) -> bool:
    counts = Counter(keys)
    return set(counts) == expected and set(counts.values()) == {1}


@pytest.mark.parametrize("featurize", ["loader", "device"])
def test_plain_loop_and_dataloader_workers_train_on_the_same_batches(shards, featurize):
    config = config_for(shards, featurize)
    loop = load_script("examples/trainers/loop.py").train(config)
    loaded = load_script("examples/trainers/dataloader.py").train(config, num_workers=2)
    assert [r.keys for r in loop] == [r.keys for r in loaded]
    assert all(once_each(r.keys, train_keys(shards)) for r in loaded) and loaded[0].keys != loaded[1].keys
    assert [r.steps for r in loaded] == [
        PackedStream(shards / "train", config.stream(backend="local")).steps(e) for e in (0, 1)
    ]


@pytest.mark.parametrize("featurize", ["loader", "device"])
def test_lightning_trainer_covers_every_key_once_per_epoch_across_two_ranks_with_a_filler(shards, featurize):
    pytest.importorskip("lightning", reason="a test extra: pip install -e '.[test]'")
    recipe = load_script("examples/trainers/lightning_fit.py")
    config = config_for(shards, featurize)
    stream = PackedStream(shards / "train", config.stream(backend="local"))
    assert [stream.plan(e).n_batches % 2 for e in (0, 1)] == [1, 1], (
        "this test needs a filler batch on rank 1 in both epochs"
    )
    modules = [
        recipe.train(config, num_workers=1, rank=rank, world=2, enable_progress_bar=False, enable_model_summary=False)
        for rank in (0, 1)
    ]
    for epoch in (0, 1):
        assert once_each([k for m in modules for k in m.keys[epoch]], train_keys(shards))
    assert modules[0].keys[0] != modules[0].keys[1]
    assert modules[1].trainer.global_step == stream.plan(0).steps(2) + stream.plan(1).steps(
        2
    )  # the fillers were steps too


def test_accelerate_loop_covers_every_key_once_per_epoch(shards):
    pytest.importorskip("accelerate", reason="a test extra: pip install -e '.[test]'")
    keys = load_script("examples/trainers/accelerate_loop.py").train(config_for(shards, "device"))
    assert all(once_each(epoch, train_keys(shards)) for epoch in keys) and keys[0] != keys[1]


def test_own_map_style_dataset_trains_through_the_packing_sampler():
    recipe = load_script("examples/trainers/own_dataset.py")
    config = TrainConfig(epochs=2, rows_per_batch=2, max_tokens=128, max_frames=128, buffer=32)
    results = recipe.train(config, recipe.RandomFbanks(40, num_classes=3), num_classes=3, num_workers=2)
    assert (
        all(once_each(r.keys, {f"item-{i}" for i in range(40)}) for r in results) and results[0].keys != results[1].keys
    )


def test_each_readme_snippet_is_part_of_the_example_it_names():
    readme = (REPO / "README.md").read_text()
    section = re.search(r"^## Use it in your trainer\n(.*?)^## ", readme, re.S | re.M).group(1)
    snippets = re.findall(r"```python\n(.*?)```", section + (REPO / "docs" / "trainers.md").read_text(), re.S)
    named = set()
    for snippet in snippets:
        first, body = snippet.split("\n", 1)
        path = re.fullmatch(r"# (examples/trainers/\w+\.py)", first).group(1)
        source = (REPO / path).read_text()
        assert textwrap.dedent(body) in source or textwrap.indent(textwrap.dedent(body), "    ") in source, path
        named.add(path)
    assert named == {
        f"examples/trainers/{name}.py"
        for name in ("loop", "dataloader", "lightning_fit", "accelerate_loop", "own_dataset")
    }
