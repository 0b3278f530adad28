"""Epoch plans from metadata alone: exactly once across ranks, capacity, determinism (properties),
with the recipe options (mixup, balanced sampling: then every draw exactly once) on and off."""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders import plan as plan_module
from loaders.config import SAMPLINGS, StreamConfig
from loaders.pack import DEFAULT_WAIT_BUFFERS, MODES, pack
from loaders.plan import Index, fnv1a64, keyed_uniform, plan_epoch, plan_tokens
from loaders.tokens import SCALE_GRID, shift_for_scale, token_counts


@st.composite
def corpora(draw):
    n = draw(st.integers(1, 300))
    seconds = draw(st.lists(st.floats(0.001, 60.0), min_size=n, max_size=n))
    shards = sorted(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
    shard = np.unique(shards, return_inverse=True)[1]  # shard ids 0..k-1, none empty
    return Index(
        keys=np.array([f"clip-{i}" for i in range(n)]),
        shard=shard.astype(np.int64),
        num_samples=(np.array(seconds) * 16000).astype(np.int64),
        sample_rate=np.full(n, 16000),
        weight=np.array(draw(st.lists(st.floats(0.01, 100.0), min_size=n, max_size=n))),
    )


@st.composite
def configs(draw, uniform: bool = False):
    """Stream settings, the training recipe's options (issue 24) included: every guarantee below
    holds with token dropout (fixed or per-sample rates), random cuts, noise, mixup and balanced
    sampling (never with `uniform`), for each packer."""
    max_frames = draw(st.sampled_from([64, 3072]))
    dropout, dropout_max = draw(st.sampled_from([(0.0, 0.0), (0.1, 0.0), (0.0, 0.5), (0.0, 0.9)]))
    options = {
        "mixup": draw(st.sampled_from([0.0, 0.5, 1.0])),
        "sampling": "uniform" if uniform else draw(st.sampled_from(SAMPLINGS)),
    }
    return StreamConfig(
        **options,
        rows_per_batch=draw(st.integers(1, 5)),
        max_tokens=draw(st.sampled_from([64, 256, 2048])),
        packing=draw(st.sampled_from(MODES)),
        buffer=draw(st.integers(1, 64)),
        scales=draw(st.sampled_from([(1.0,), SCALE_GRID])),
        max_frames=max_frames,
        shuffle=draw(st.booleans()),
        seed=draw(st.integers(0, 3)),
        max_per_row=draw(st.none() | st.integers(1, 4)),
        token_dropout=dropout,
        token_dropout_max=dropout_max,
        random_cut=draw(st.sampled_from([0, 16, 48, min(384, max_frames)])),
        noise=draw(st.booleans()),
    )


@settings(deadline=None, max_examples=150)
@given(index=corpora(), config=configs(), epoch=st.integers(0, 5), world=st.integers(1, 5))
def test_every_sample_once_across_ranks_with_equal_steps_and_no_overflow(index, config, epoch, world):
    """Uniform sampling delivers every sample once; balanced sampling every draw once (so no two
    ranks ever receive the same draw), as many draws as samples, each of a sample of the index."""
    plan = plan_epoch(index, config, epoch)
    delivered = []
    for rank in range(world):
        for step in range(plan.steps(world)):
            batch = plan.batch_for(step, rank, world)
            if batch is not None:
                delivered += units(plan)[plan.batch_starts[batch] : plan.batch_starts[batch + 1]].tolist()
    assert sorted(delivered) == list(range(len(index.keys)))
    assert np.all((0 <= plan.sample) & (plan.sample < len(index.keys)))
    assert plan.steps(world) * world - plan.n_batches < world  # fillers: fewer than one round
    assert np.all(plan.row < config.rows_per_batch) and np.all(plan.offset >= 0)
    assert np.all(plan.offset + plan.tokens <= config.max_tokens)
    fill = np.zeros((plan.n_batches, config.rows_per_batch), np.int64)
    np.add.at(fill, (plan.batch, plan.row), plan.tokens)
    assert fill.max(initial=0) <= config.max_tokens
    for b in range(plan.n_batches):  # samples of a row never overlap
        for r in range(config.rows_per_batch):
            members = (plan.batch == b) & (plan.row == r)
            spans = sorted(zip(plan.offset[members], plan.offset[members] + plan.tokens[members]))
            assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    again = plan_epoch(index, config, epoch)
    assert np.array_equal(plan.sample, again.sample) and np.array_equal(plan.offset, again.offset)
    assert all(same(getattr(plan, name), getattr(again, name)) for name in ("draw", "partner"))
    if config.mixup:  # a partner changes no token count: the plan is the unmixed one, partners aside
        unmixed = plan_epoch(index, replace(config, mixup=0.0), epoch)
        assert unmixed.partner is None and np.all(plan.partner < len(index.keys))
        assert all(np.array_equal(getattr(plan, f), getattr(unmixed, f)) for f in ("sample", "batch", "row", "offset"))


def units(plan) -> np.ndarray:
    """What an epoch delivers exactly once: its samples, or under balanced sampling its draws."""
    return plan.sample if plan.draw is None else plan.draw


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


@settings(deadline=None, max_examples=100)
@given(
    index=corpora(),
    config=configs(),
    legs=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 8)), min_size=1, max_size=4),
)
def test_an_epoch_resumed_on_other_worlds_delivers_the_rest_once_in_equal_steps(index, config, legs):
    """An epoch run as legs (world, steps run before a kill), each resumed from the batches the
    ones before consumed, on another world; the last leg runs to the end. By hand: the legs
    together deliver each sample once, all ranks of a leg run the same steps, and a leg resumed
    on the same world takes the very batches the uninterrupted run would have."""
    plan = plan_epoch(index, config, 0)
    delivered, consumed = [], 0
    for number, (world, run) in enumerate(legs):
        last = number == len(legs) - 1
        first, shift = divmod(consumed, world)
        end = plan.steps(world, consumed) if last else min(first + run, plan.steps(world, consumed))
        taken = [[plan.batch_for(step, rank, world, consumed) for step in range(first, end)] for rank in range(world)]
        assert len({len(steps) for steps in taken}) == 1  # equal steps on every rank of the leg
        assert sum(b is None for steps in taken for b in steps) < world  # fillers: less than a round
        if shift == 0:  # the uninterrupted run on this world takes the same batches at these steps
            assert taken == [[plan.batch_for(s, r, world) for s in range(first, end)] for r in range(world)]
        batches = [b for steps in taken for b in steps if b is not None]
        delivered += [s for b in batches for s in units(plan)[plan.batch_starts[b] : plan.batch_starts[b + 1]]]
        assert sorted(batches) == list(range(consumed, consumed + len(batches)))  # the next ones, no gap
        consumed = plan.consumed(end, world, shift)
    assert consumed == plan.n_batches
    assert sorted(delivered) == list(range(len(index.keys)))


@settings(deadline=None, max_examples=100)
@given(index=corpora(), config=configs(uniform=True), epoch=st.integers(0, 3))
def test_packing_runs_on_across_shard_groups_and_keeps_rows_local(index, config, epoch):
    """Unshuffled, shards arrive in order: the plan's rows are those of one `pack()` call over the
    whole epoch (no group boundary cuts a row), and no row spans more arrivals than the packer's
    wait bound (first_fit: max_wait + buffer; greedy: its runs of `buffer`)."""
    config = StreamConfig(**{**config.__dict__, "shuffle": False})
    plan = plan_epoch(index, config, epoch)
    arrival = np.argsort(index.shard, kind="stable")
    slot = np.empty(len(arrival), np.int64)
    slot[arrival] = np.arange(len(arrival))
    row_of_plan = plan.batch * config.rows_per_batch + plan.row
    rows = {tuple(sorted(slot[plan.sample[row_of_plan == r]].tolist())) for r in np.unique(row_of_plan)}
    tokens = np.zeros(len(arrival), np.int64)
    tokens[slot[plan.sample]] = plan.tokens
    once = pack(tokens, config.max_tokens, config.packing, config.buffer, max_per_row=config.max_per_row)
    assert rows == {tuple(np.flatnonzero(once == r).tolist()) for r in range(once.max(initial=-1) + 1)}
    window = (DEFAULT_WAIT_BUFFERS + 1) * config.buffer if config.packing == "first_fit" else config.buffer
    assert all(row[-1] - row[0] < window for row in rows)


@pytest.mark.parametrize("shuffle", [False, True])
def test_part_filled_rows_carry_into_the_next_group(shuffle):
    """8 shards of five 512-token samples, buffer 4: every shard is a group of its own. Packed
    group by group, each would leave a row of 512 tokens (16 rows); carried over, 40 x 512 fill 10 rows."""
    config = StreamConfig(rows_per_batch=2, buffer=4, shuffle=shuffle)
    plan = plan_tokens(np.full(40, 512), np.arange(40) // 5, config, epoch=0)
    fills = np.bincount(plan.batch * 2 + plan.row, weights=plan.tokens)
    assert fills.tolist() == [2048.0] * 10 and plan.n_batches == 5 and plan.pad_ratio == 0.0
    assert sorted(plan.sample.tolist()) == list(range(40))


@pytest.mark.parametrize(
    "field, options",
    [
        ("scale", {"scales": SCALE_GRID}),
        ("window_start", {"random_cut": 48, "max_frames": 48}),
        ("dropped", {"token_dropout_max": 0.9}),
    ],
)
def test_a_samples_draws_depend_on_seed_epoch_and_key_only(field, options):
    """Its scale C, random window (its start, with the length pinned by the cap) and token dropout:
    the same wherever the key stands in the index, drawn afresh for another seed or epoch."""
    index = Index(
        np.array([f"k{i}" for i in range(200)]), np.zeros(200, np.int64), np.full(200, 48000), np.full(200, 16000)
    )
    config = StreamConfig(rows_per_batch=2, **options)
    draw_of = lambda plan: dict(zip(plan.sample.tolist(), getattr(plan, field).tolist()))
    base = draw_of(plan_epoch(index, config, 0))
    reordered = Index(index.keys[::-1], index.shard, index.num_samples, index.sample_rate)
    flipped = draw_of(plan_epoch(reordered, config, 0))
    assert all(base[i] == flipped[199 - i] for i in range(200))  # follows the key, not the position
    for other in (StreamConfig(rows_per_batch=2, seed=1, **options), config):
        changed = draw_of(plan_epoch(index, other, 0 if other.seed else 1))  # another seed, then another epoch
        assert sum(base[i] != changed[i] for i in base) > 150  # drawn afresh (C: 15 in 16 change)
    assert field != "scale" or set(base.values()) == set(SCALE_GRID)


def test_key_hash_and_uniforms_are_stable():
    hashes = fnv1a64(np.array(["", "a", "clip-1", "é"]))
    assert hashes[1] == 0xAF63DC4C8601EC8C  # FNV-1a 64 of b"a"
    assert len(set(hashes.tolist())) == 4
    assert fnv1a64(np.array(["a", "a-much-longer-neighbour"]))[0] == hashes[1]  # independent of neighbours
    u = keyed_uniform(fnv1a64(np.array([f"k{i}" for i in range(20000)])), 7, 1)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_bad_plan_configurations_are_refused():
    for bad in (
        dict(rows_per_batch=0),
        dict(rows_per_batch=1, scales=()),
        dict(rows_per_batch=1, scales=(0.5,)),
        dict(rows_per_batch=1, compression="mel"),
        dict(rows_per_batch=1, compression="avgpool", scales=(1.5,)),
    ):
        with pytest.raises(ValueError):
            StreamConfig(**bad)


@settings(deadline=None, max_examples=60)
@given(index=corpora(), config=configs(), chunk=st.integers(1, 40))
def test_a_plan_made_in_chunks_counts_each_sample_as_alone(index, config, chunk):
    """plan_epoch's per-sample arithmetic runs a chunk at a time: any chunk gives the same plan, and
    each sample's tokens and cut are those of its own length at its own scale (one clip at a time):
    the cut is the cap's alone; a random window is T frames of the clip, a multiple of 16 between
    random_cut and what the cap keeps (the whole clip when shorter than random_cut); token
    dropout removes floor(tokens x rate), the rate fixed or below token_dropout_max."""
    whole = plan_epoch(index, config, 1)
    with mock.patch.object(plan_module, "_CHUNK", chunk):
        plan = plan_epoch(index, config, 1)
    for name in ("sample", "batch", "row", "offset", "tokens", "cut", "scale", "dropped", "window_start"):
        assert np.array_equal(getattr(plan, name), getattr(whole, name)), name
    for i, tokens, cut, scale, dropped, start in zip(
        plan.sample, plan.tokens, plan.cut, plan.scale, plan.dropped, plan.window_start
    ):
        alone = token_counts(
            int(index.num_samples[i]),
            int(index.sample_rate[i]),
            shift_for_scale(scale),
            max_frames=config.max_frames,
            capacity=config.max_tokens,
        )
        assert scale in config.scales and cut == int(alone.cut)
        window, kept_frames = (tokens + dropped) // 8 * 16, int(alone.tokens) // 8 * 16
        if not config.random_cut:
            assert (tokens + dropped, start) == (int(alone.tokens), 0)
        elif alone.frames < config.random_cut:
            assert (window, start) == (kept_frames, 0)
        else:
            assert min(config.random_cut // 16 * 16, kept_frames) <= window <= kept_frames and window % 16 == 0
            assert 0 <= start <= alone.frames - window
        assert tokens >= 1
        if config.token_dropout:
            assert dropped == int((tokens + dropped) * config.token_dropout)
        elif config.token_dropout_max:
            assert dropped <= (tokens + dropped) * config.token_dropout_max
        else:
            assert dropped == 0
