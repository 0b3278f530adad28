"""PackedStream as a torch IterableDataset: DataLoader workers deliver each step once and in
order, epochs and resume positions reach the workers, featurizing runs on one torch thread."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torchdata import stateful_dataloader as stateful

from loaders import PackedStream
from loaders import stream as stream_module
from loaders.threads import torch_threads
from shards import ShardDataset

from conftest import MIXUP_BALANCED, RECIPE_OPTIONS, same_content

SETTINGS = dict(rows_per_batch=1, max_tokens=256, max_frames=256, buffer=16, scales=(1.0, 2.0, 3.0), backend="local")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_shards):
    out = tmp_path_factory.mktemp("dataloader") / "shards"
    assert (
        make_shards.main(
            ["--out", str(out), "--demo-clips", "40", "--backend", "local", "--quiet", "--shard-size", "1MiB"]
        )
        == 0
    )
    return out


@pytest.fixture(params=["loader", "device"])
def settings(request) -> dict:
    """The guarantees hold whether workers ship patches or waveforms (featurize="device")."""
    return SETTINGS | {"featurize": request.param}


def delivered(batches) -> list[tuple]:
    """What a trainer is handed, the form included (patches, or waveforms with their layout)."""
    return [(b.epoch, b.step, tuple(b.sample_ids), b.is_padding, shipped(b)) for b in batches]


def shipped(batch) -> tuple:
    if batch.featurized:
        return ("patches", batch.patches.shape)
    return ("waveforms", batch.audio.samples.dtype, batch.audio.samples.numel(), tuple(batch.audio.layout.shape))


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_dataloader_workers_deliver_every_step_once_in_step_order_on_two_ranks(shards, settings, num_workers):
    streams = [PackedStream(shards / "train", **settings, rank=rank, world=2) for rank in (0, 1)]
    uneven = [e for e in range(40) if streams[0].plan(e).n_batches % 2]  # rank 1 gets a filler batch
    epoch = uneven[num_workers]
    plan = streams[0].plan(epoch)
    seen = Counter()
    for stream in streams:
        stream.set_epoch(epoch)
        assert len(stream) == plan.steps(2) and stream.num_samples == len(ShardDataset(shards).index("train"))
        got = delivered(DataLoader(stream, batch_size=None, num_workers=num_workers))
        assert got == delivered(stream.epoch(epoch))
        assert [step for _, step, *_ in got] == list(range(plan.steps(2)))
        seen.update(key for _, _, keys, *_ in got for key in keys)
    assert [padding for *_, padding, _ in got] == [False] * (plan.steps(2) - 1) + [True]  # rank 1 ends on a filler
    assert set(seen) == set(streams[0].index["key"]) and set(seen.values()) == {1}


def test_set_epoch_reaches_persistent_workers_and_changes_the_order(shards):
    stream = PackedStream(shards / "train", **SETTINGS)
    loader = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True)
    passes = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        passes.append(delivered(loader))
        assert passes[-1] == delivered(stream.epoch(epoch))
    assert [keys for _, _, keys, *_ in passes[0]] != [keys for _, _, keys, *_ in passes[1]]


def test_resume_from_a_state_dict_yields_exactly_the_remaining_batches(shards, settings):
    stream = PackedStream(shards / "train", **settings, rank=1, world=2)
    stream.set_epoch(2)
    full = delivered(stream.epoch(2))
    taken = iter(stream)
    for _ in range(3):
        next(taken)
    state = stream.state_dict()
    assert state == {"epoch": 2, "consumed": 6}  # 3 steps of 2 ranks
    resumed = PackedStream(shards / "train", **settings, rank=1, world=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the epoch already set keeps its restored step
    assert delivered(DataLoader(resumed, batch_size=None, num_workers=2)) == full[3:]
    assert delivered(resumed) == full[3:]
    resumed.set_epoch(3)
    assert delivered(resumed) == delivered(stream.epoch(3))
    with pytest.raises(KeyError, match="consumed"):
        resumed.load_state_dict({"epoch": 1})


@pytest.mark.parametrize("options", [*RECIPE_OPTIONS, MIXUP_BALANCED])
def test_a_state_saved_on_three_ranks_resumes_on_two_with_every_key_once(shards, settings, options):
    """Three ranks take a step each; the state of any of them resumes on 2 ranks (one through
    DataLoader workers): every key of the epoch (under balanced sampling every draw) exactly once
    over both legs, equal steps; the batches DataLoader workers make (mixup targets too) are,
    bitwise, those made in-process (keyed augmentations)."""
    settings = settings | options
    three = [PackedStream(shards / "train", **settings, rank=rank, world=3) for rank in range(3)]
    seen, states = Counter(), []
    for stream in three:
        stream.set_epoch(1)
        seen.update(next(iter(stream)).sample_ids)
        states.append(stream.state_dict())
    assert states == [{"epoch": 1, "consumed": 3}] * 3  # the plan's batches taken, not a rank's cursor
    two = [PackedStream(shards / "train", **settings, rank=rank, world=2) for rank in (0, 1)]
    legs = []
    for stream, workers in zip(two, (0, 2)):
        stream.load_state_dict(states[0])
        loaded, direct = (
            list(DataLoader(stream, batch_size=None, num_workers=workers)),
            list(stream.epoch(1, consumed=3)),
        )
        legs.append(delivered(loaded))
        assert legs[-1] == delivered(direct)
        assert all(same_content(a, b) for a, b in zip(loaded, direct))
        seen.update(i for batch in loaded for i in batch.sample_ids)
    batches = three[0].plan(1).n_batches - 3
    assert len(legs[0]) == len(legs[1]) == -(-batches // 2)  # 3 % 2: dealt from batch 3, steps from 1
    assert [step for _, step, *_ in legs[0]] == list(range(1, 1 + len(legs[0])))
    assert seen == Counter(three[0].planned_ids(1).to_pylist()) and set(seen.values()) == {1}


def test_torchdata_stateful_dataloader_resumes_mid_epoch(shards, settings):
    stream = PackedStream(shards / "train", **settings)
    stream.set_epoch(1)
    full = delivered(stream.epoch(1))
    for num_workers in (0, 2):
        loader = stateful.StatefulDataLoader(stream, batch_size=None, num_workers=num_workers)
        taken = iter(loader)
        head = delivered([next(taken) for _ in range(3)])
        state = loader.state_dict()
        again = stateful.StatefulDataLoader(
            PackedStream(shards / "train", **settings), batch_size=None, num_workers=num_workers
        )
        again.load_state_dict(state)
        assert head + delivered(again) == full


def test_ray_backend_is_refused_inside_dataloader_workers(shards):
    stream = PackedStream(shards / "train", **(SETTINGS | {"backend": "ray"}))
    with pytest.raises(RuntimeError, match="num_workers=0"):
        next(iter(DataLoader(stream, batch_size=None, num_workers=1)))


def record_featurizing_threads(monkeypatch, log: Path) -> None:
    """Append torch's thread count, as the featurizing call sees it, to `log` at every batch (the
    real `assemble` still runs); a file, so forked DataLoader workers report too."""
    real = stream_module.assemble

    def observed(*args, **kwargs):
        with log.open("a") as handle:
            handle.write(f"{torch.get_num_threads()}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_module, "assemble", observed)


def test_featurizing_runs_on_one_thread_in_process_and_in_workers_and_the_trainer_keeps_its_own(
    shards, tmp_path, monkeypatch
):
    log = tmp_path / "threads.txt"
    record_featurizing_threads(monkeypatch, log)
    with torch_threads(2):
        for _ in zip(range(3), PackedStream(shards / "train", **SETTINGS).epoch(0)):
            assert torch.get_num_threads() == 2  # what the trainer's step between batches runs with
        assert log.read_text().split() == ["1"] * 3
        log.unlink()
        loader = DataLoader(
            PackedStream(shards / "train", **SETTINGS),
            batch_size=None,
            num_workers=1,
            multiprocessing_context="fork",  # the recorder reaches the worker
            worker_init_fn=lambda _: torch.set_num_threads(2),  # a worker that would otherwise run on 2
        )
        assert len(list(zip(range(3), loader))) == 3
        seen = log.read_text().split()  # the worker runs ahead of the trainer: 3 batches or more
        assert len(seen) >= 3 and set(seen) == {"1"}
        log.unlink()
        for _ in zip(range(2), PackedStream(shards / "train", **(SETTINGS | {"torch_threads": None})).epoch(0)):
            pass
        assert log.read_text().split() == ["2"] * 2  # told otherwise: the caller's count
    with pytest.raises(ValueError, match="torch_threads"):
        PackedStream(shards / "train", **(SETTINGS | {"torch_threads": 0}))
