"""Bring your own dataset: `PackingSampler` plans a map-style dataset like the stream plans
shards (exactly once across ranks, equal steps with fillers, capacity kept, keyed by seed and
epoch), and `collate_packed` places each fbank's patches where `PackedBatch` says they are."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from loaders import PackingSampler, collate_packed, frame_tokens

CAPACITY, ROWS, MAX_FRAMES = 256, 3, 400


class RandomFbanks(Dataset):
    """Random "fbanks" of 3 to 700 frames, 128 bins, with a label and a key."""

    def __init__(self, size: int):
        rng = np.random.default_rng(7)
        self.frames = rng.integers(3, 700, size)
        self.labels = rng.integers(0, 4, size)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        fbank = torch.from_numpy(
            np.random.default_rng(index).standard_normal((self.frames[index], 128), dtype=np.float32)
        )
        return {"fbank": fbank, "label": int(self.labels[index]), "key": f"item-{index}"}


@pytest.fixture(scope="module")
def data() -> RandomFbanks:
    return RandomFbanks(120)


def sampler_for(data, rank=0, world=1, seed=0):
    counts = frame_tokens(data.frames, max_frames=MAX_FRAMES, capacity=CAPACITY).tokens
    return PackingSampler(counts, CAPACITY, ROWS, max_frames=MAX_FRAMES, buffer=32, seed=seed, rank=rank, world=world)


def test_token_counts_of_ready_fbanks_follow_the_patch_and_crop_rules():
    counts = frame_tokens([3, 16, 47, 400, 700], max_frames=MAX_FRAMES, capacity=CAPACITY)
    # 3 frames: padded to one patch (8 tokens); 47: floored to 32 frames; 400: 25 patches of 16 frames;
    # 700: floored to 688, cropped to max_frames 400 (capacity allows 512): 18 patches (144 tokens) cut
    assert counts.tokens.tolist() == [8, 8, 16, 200, 200]
    assert counts.cut.tolist() == [0, 0, 0, 0, 144]


def test_every_item_once_across_ranks_with_equal_steps_and_fillers(data):
    for epoch in (0, 1):
        seen, steps, fillers = Counter(), set(), 0
        for rank in (0, 1, 2):
            sampler = sampler_for(data, rank, 3)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            steps.add(len(batches))
            assert len(sampler) == len(batches)
            fillers += sum(not b for b in batches)
            seen.update(i for b in batches for i in b)
        assert len(steps) == 1 and fillers == steps.pop() * 3 - sampler.plan(epoch).n_batches
        assert sorted(seen) == list(range(len(data))) and set(seen.values()) == {1}


def test_same_seed_and_epoch_same_batches_else_another_order(data):
    first = list(sampler_for(data))
    assert first == list(sampler_for(data))
    again = sampler_for(data)
    again.set_epoch(1)
    assert list(again) != first and list(sampler_for(data, seed=1)) != first


def test_collated_batches_hold_each_fbank_at_its_place(data):
    sampler = sampler_for(data, rank=2, world=3)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=sampler.collate, num_workers=2)
    batches = list(loader)
    assert batches and all(b.patches.shape == (ROWS, CAPACITY, 256) for b in batches)
    for batch in batches:
        for i, key in enumerate(batch.keys):
            item = data[int(key.split("-")[1])]
            where = torch.nonzero(batch.segment_ids[batch.row[i]] == batch.slot[i]).flatten()
            assert len(where) == batch.n_tokens[i] and torch.all(where.diff() == 1)
            frames = min(max(len(item["fbank"]) // 16 * 16, 16), MAX_FRAMES)
            expected = torch.nn.functional.pad(
                item["fbank"][:frames], (0, 0, 0, frames - min(frames, len(item["fbank"])))
            )
            patches = batch.patches[batch.row[i], where]  # token (time t, band f): mel 16f+m, frame 16t+k at m*16+k
            rebuilt = patches.reshape(frames // 16, 8, 16, 16).permute(0, 3, 1, 2).reshape(frames, 128)
            assert torch.equal(rebuilt, expected)
            assert batch.labels[i] == item["label"]
            assert torch.equal(batch.time_pos[batch.row[i], where], torch.arange(frames // 16).repeat_interleave(8))
    assert sampler.plan(0).n_batches % 3, "this test needs a batch count that 3 ranks cannot share evenly"
    filler = batches[-1]
    assert filler.is_padding and filler.num_samples == 0 and filler.real_tokens == 0
    assert not any(b.is_padding for b in batches[:-1])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="item 1 is not in 1..256"):
        PackingSampler([8, 300], CAPACITY, ROWS)
    with pytest.raises(ValueError, match="packing 'best'"):
        PackingSampler([8], CAPACITY, ROWS, mode="best")
    with pytest.raises(ValueError, match=r"'odd': fbank of shape \(20, 40\)"):
        collate_packed([{"fbank": torch.zeros(20, 40), "label": 0, "key": "odd"}], CAPACITY, ROWS)
    too_many = [{"fbank": torch.zeros(512, 128), "label": 0, "key": str(i)} for i in range(ROWS + 1)]
    with pytest.raises(ValueError, match="'3' .256 tokens. does not fit"):
        collate_packed(too_many, CAPACITY, ROWS)
