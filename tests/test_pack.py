"""Packer exactness: properties of both modes, Numba == reference, layout, errors."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders import Packing, pack
from loaders.pack import MODES


@st.composite
def problems(draw, max_size=120):
    capacity = draw(st.integers(1, 300))
    counts = draw(st.lists(st.integers(1, capacity), max_size=max_size))
    return {
        "token_counts": np.array(counts, dtype=np.int64),
        "capacity": capacity,
        "buffer": draw(st.integers(1, 24)),
        "max_per_row": draw(st.none() | st.integers(1, 6)),
        "max_wait": draw(st.none() | st.integers(0, 40)),
    }


def assert_exact(problem, rows):
    """Every sample in exactly one row, rows 0..n-1 all used, no row over its limits."""
    counts, capacity = problem["token_counts"], problem["capacity"]
    assert rows.shape == counts.shape and rows.dtype == np.int64
    if rows.size == 0:
        return
    per_row = np.bincount(rows)
    assert rows.min() == 0 and per_row.all()
    assert np.bincount(rows, weights=counts).max() <= capacity
    if problem["max_per_row"] is not None:
        assert per_row.max() <= problem["max_per_row"]


@settings(deadline=None, max_examples=300)
@given(problem=problems(), mode=st.sampled_from(["greedy", "first_fit"]))
def test_exact_deterministic_and_equal_to_reference(problem, mode):
    rows = pack(**problem, mode=mode)
    assert_exact(problem, rows)
    assert np.array_equal(rows, pack(**problem, mode=mode))
    assert np.array_equal(rows, pack(**problem, mode=mode, engine="python"))


@settings(deadline=None, max_examples=200)
@given(problem=problems())
def test_greedy_keeps_arrival_order_and_opens_rows_only_when_needed(problem):
    counts, capacity, buffer = problem["token_counts"], problem["capacity"], problem["buffer"]
    slots = problem["max_per_row"] or capacity
    rows = pack(**problem, mode="greedy")
    assert np.all(np.isin(np.diff(rows), [0, 1]))
    fill = used = 0
    for i, count in enumerate(counts):
        if i and rows[i] != rows[i - 1]:
            assert i % buffer == 0 or fill + count > capacity or used == slots
            fill = used = 0
        elif i:
            assert i % buffer != 0
        fill += count
        used += 1


@settings(deadline=None, max_examples=200)
@given(problem=problems(max_size=200))
def test_first_fit_caps_how_long_a_sample_waits(problem):
    rows = pack(**problem, mode="first_fit")
    wait = 4 * problem["buffer"] if problem["max_wait"] is None else problem["max_wait"]
    horizon = wait + problem["buffer"]
    emitted_by = np.maximum.accumulate(rows)  # last row id used by samples 0..i
    for j in range(horizon, len(rows)):
        assert emitted_by[j - horizon] < rows[j]


@settings(deadline=None, max_examples=100)
@given(problem=problems(), mode=st.sampled_from(["greedy", "first_fit"]))
def test_layout_places_samples_back_to_back_in_index_order(problem, mode):
    counts, capacity = problem["token_counts"], problem["capacity"]
    layout = Packing.from_rows(counts, pack(**problem, mode=mode), capacity)
    order, starts = layout.members()
    assert starts[-1] == len(counts) and len(starts) == layout.n_rows + 1
    for r in range(layout.n_rows):
        samples = order[starts[r] : starts[r + 1]]
        assert np.all(np.diff(samples) > 0) and np.all(layout.row[samples] == r)
        ends = np.cumsum(counts[samples])
        assert np.array_equal(layout.offset[samples], ends - counts[samples])
        assert ends[-1] == layout.row_fill[r] <= capacity
    used = int(counts.sum())
    expected = 1 - used / (layout.n_rows * capacity) if layout.n_rows else 0.0
    assert layout.pad_ratio == pytest.approx(expected)


def test_greedy_packs_each_group_next_fit():
    counts = [6, 4, 7, 3, 5, 5, 2, 8]
    assert pack(counts, capacity=10, mode="greedy", buffer=3).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert pack(counts, capacity=10, mode="greedy", buffer=8, max_per_row=1).tolist() == list(range(8))


def test_first_fit_fills_rows_exactly_when_possible():
    counts = np.array([6, 4, 7, 3, 5, 5, 2, 8] * 8)
    rows = pack(counts, capacity=10, mode="first_fit", buffer=8)
    assert Packing.from_rows(counts, rows, 10).pad_ratio == 0.0


@pytest.mark.parametrize("engine", ["numba", "python"])
def test_first_fit_rebuilds_a_short_row_as_an_exact_fill(engine):
    # seed 4, then 4 and 1 leave 1 of 10, and no pending pair beats a member; 4 + 3 + 3 fills it
    assert pack([4, 4, 3, 3, 1], 10, buffer=5, engine=engine).tolist() == [0, 1, 0, 0, 1]
    # in units of 3 a row of 31 is full at 30: the same rows
    assert pack([12, 12, 9, 9, 3], 31, buffer=5, engine=engine).tolist() == [0, 1, 0, 0, 1]
    # an exact fill needing more samples than a row may hold is not taken
    assert pack([4, 4, 3, 3, 1], 10, buffer=5, max_per_row=2, engine=engine).tolist() == [0, 0, 1, 1, 2]


def speech_like_counts(n):
    """VoxCeleb-like token counts: 4 s + lognormal seconds, capped at 30 s, 8 tokens per 16 frames."""
    rng = np.random.default_rng(0)
    seconds = np.minimum(4 + rng.lognormal(np.log(2.6), 1.0, n), 30)
    return (seconds * 100).astype(np.int64) // 16 * 8


@pytest.mark.parametrize("buffer", [12, 256])
@pytest.mark.parametrize("max_per_row", [None, 4])
def test_numba_matches_reference_on_speech_like_lengths(buffer, max_per_row):
    counts = speech_like_counts(3000)
    for mode in ("greedy", "first_fit"):
        rows = pack(counts, 2048, mode, buffer, max_per_row=max_per_row)
        assert np.array_equal(rows, pack(counts, 2048, mode, buffer, max_per_row=max_per_row, engine="python"))


def test_first_fit_beats_greedy_on_speech_like_lengths():
    counts = speech_like_counts(5000)
    greedy = Packing.from_rows(counts, pack(counts, 2048, "greedy", 128), 2048).pad_ratio
    first_fit = Packing.from_rows(counts, pack(counts, 2048, "first_fit", 256), 2048).pad_ratio
    assert first_fit < 0.02 < 0.1 < greedy


def test_empty_input():
    assert pack([]).shape == (0,)
    layout = Packing.from_rows([], [], 2048)
    assert (layout.n_rows, layout.pad_ratio) == (0, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"token_counts": [3, 0, 2]}, ValueError, "token_counts\\[1\\] = 0"),
        ({"token_counts": [3, -1]}, ValueError, "token_counts\\[1\\] = -1"),
        ({"token_counts": [3, 2049]}, ValueError, "2049 is outside 1..capacity \\(2048\\)"),
        ({"token_counts": [1.5]}, TypeError, "float64"),
        ({"token_counts": [[1, 2]]}, ValueError, "1-D"),
        ({"capacity": 0}, ValueError, "capacity must be an integer >= 1, got 0"),
        ({"mode": "best_fit"}, ValueError, "'best_fit'"),
        ({"engine": "cuda"}, ValueError, "'cuda'"),
        ({"buffer": 0}, ValueError, "buffer must be an integer >= 1, got 0"),
        ({"max_per_row": 0}, ValueError, "max_per_row must be an integer >= 1, got 0"),
        ({"max_wait": -1}, ValueError, "max_wait must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, message):
    arguments = {"token_counts": [3, 4]} | kwargs
    with pytest.raises(error, match=message):
        pack(**arguments)


def test_layout_rejects_rows_that_do_not_fit():
    with pytest.raises(ValueError, match="holds 7 tokens > capacity 5"):
        Packing.from_rows([3, 4], [0, 0], 5)
    with pytest.raises(ValueError, match="row 1 is empty"):
        Packing.from_rows([3, 4], [0, 2], 5)


@settings(deadline=None, max_examples=300)
@given(problem=problems(max_size=12))
def test_first_fit_fills_the_first_row_whenever_its_pool_can(problem):
    """Brute force over the first pool: if some pending samples with the seed (the largest, the
    oldest of equals; the oldest once more than max_wait have arrived) fill a row exactly within
    the slots, the first row is full."""
    counts, capacity, buffer = problem["token_counts"], problem["capacity"], problem["buffer"]
    pool = counts[:buffer].tolist()
    if not pool:
        return
    wait = 4 * buffer if problem["max_wait"] is None else problem["max_wait"]
    seed = 0 if len(pool) > wait else int(np.argmax(pool))
    others = pool[:seed] + pool[seed + 1 :]
    slots = problem["max_per_row"] or capacity
    exact = any(
        pool[seed] + sum(subset) == capacity
        for size in range(min(slots, len(pool)))
        for subset in itertools.combinations(others, size)
    )
    rows = pack(**problem, mode="first_fit")
    assert not exact or counts[rows == 0].sum() == capacity


@settings(deadline=None, max_examples=200)
@given(problem=problems(max_size=60), unit=st.integers(2, 8), spare=st.integers(0, 7), mode=st.sampled_from(MODES))
def test_rows_do_not_depend_on_the_unit_of_the_counts(problem, unit, spare, mode):
    """Counts all multiples of `unit` pack as the counts in units, whatever the capacity's remainder."""
    scaled = dict(
        problem, token_counts=problem["token_counts"] * unit, capacity=problem["capacity"] * unit + spare % unit
    )
    assert np.array_equal(pack(**scaled, mode=mode), pack(**problem, mode=mode))
