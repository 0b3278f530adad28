"""Pure-Python packers: the readable specification that the Numba kernels must match.

Both functions return one row id per sample, rows numbered from 0 in emission order.
Arguments are validated by `loaders.pack.pack`; ``slots`` is the most samples a row
may hold (pass ``capacity`` for no limit).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def greedy_rows(counts: Sequence[int], capacity: int, group: int, slots: int) -> list[int]:
    """Next-fit in arrival order; each run of ``group`` samples is packed on its own.

    This is the paper's method: every packing call sees one batch of ``group`` samples
    and opens a new row whenever the next sample does not fit.
    """
    rows = []
    row, fill, used = -1, 0, 0
    for i, count in enumerate(counts):
        if i % group == 0 or fill + count > capacity or used == slots:
            row, fill, used = row + 1, 0, 0
        rows.append(row)
        fill += count
        used += 1
    return rows


class _Pending:
    """Samples waiting for a row, kept largest first (oldest first among equal sizes)."""

    def __init__(self, counts: Sequence[int]):
        self.counts = counts
        self.keys: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, i: int) -> None:
        bisect.insort(self.keys, (-self.counts[i], i))

    def remove(self, i: int) -> None:
        del self.keys[bisect.bisect_left(self.keys, (-self.counts[i], i))]

    def largest(self) -> int:
        return self.keys[0][1]

    def largest_at_most(self, limit: int) -> int | None:
        pos = bisect.bisect_left(self.keys, (-limit, -1))
        return self.keys[pos][1] if pos < len(self.keys) else None

    def best_pair(self, above: int, limit: int) -> tuple[int, int] | None:
        """Two samples whose sizes sum to the most in ``(above, limit]``, or None.

        Ties go to the pair whose first member comes earliest in the pending order,
        then to the earliest partner (so: larger, then older).
        """
        sizes = [-key for key, _ in self.keys]
        best, pair = above, None
        partner = len(sizes)  # leftmost position whose size fits next to the current first
        for first, size in enumerate(sizes):
            if 2 * size <= best:
                break  # partners are never larger than `size`
            while partner > 0 and sizes[partner - 1] <= limit - size:
                partner -= 1
            second = max(partner, first + 1)
            if second < len(sizes) and size + sizes[second] > best:
                best, pair = size + sizes[second], (first, second)
        if pair is None:
            return None
        return self.keys[pair[0]][1], self.keys[pair[1]][1]


def _heuristic_row(seed: int, pending: _Pending, capacity: int, slots: int) -> list[int]:
    """One row: the seed, then the largest pending samples that fit, then gap closing.

    Gap closing swaps one member for the pending pair that fills the row best, and
    repeats while that strictly reduces the gap (greedy alone leaves gaps smaller
    than any pending sample, about 2-3 % of a row on speech-like lengths).
    """
    counts = pending.counts
    pending.remove(seed)
    members = [seed]
    gap = capacity - counts[seed]
    while len(members) < slots:
        i = pending.largest_at_most(gap)
        if i is None:
            break
        pending.remove(i)
        members.append(i)
        gap -= counts[i]
    while 0 < gap and len(members) < slots:
        gain, swap = 0, None
        for pos in range(len(members)):
            size = counts[members[pos]]
            pair = pending.best_pair(above=size + gain, limit=size + gap)
            if pair is not None:
                gain, swap = counts[pair[0]] + counts[pair[1]] - size, (pos, pair)
                if gain == gap:
                    break
        if swap is None:
            break
        pos, pair = swap
        for i in pair:
            pending.remove(i)
        pending.add(members.pop(pos))
        members.extend(pair)
        gap -= gain
    return members


def _exact_row(seed: int, pending: _Pending, capacity: int, slots: int) -> list[int] | None:
    """The seed and pending samples (the seed left pending) that fill the row exactly, or None.

    Of all exact fills it takes as many samples of the largest size as it can, then of the
    next size, and so on (the fill whose sizes, largest first, compare greatest), the oldest
    of each size; None too when that fill holds more than ``slots`` samples. Integers serve
    as bit sets of reachable sums: bit t of ``reach[j]`` says sizes ``j:`` can sum to t.
    """
    counts = pending.counts
    target = capacity - counts[seed]
    by_size: dict[int, list[int]] = {}
    for key, i in pending.keys:  # largest size first, oldest first within a size
        if i != seed:
            by_size.setdefault(-key, []).append(i)
    sizes = list(by_size)
    reach, sums = [0] * len(sizes) + [1], (1 << target + 1) - 1  # sums: the bits 0..target
    for j in range(len(sizes) - 1, -1, -1):
        reach[j] = reach[j + 1]
        for _ in range(min(len(by_size[sizes[j]]), target // sizes[j])):
            reach[j] |= reach[j] << sizes[j] & sums
    if not reach[0] >> target & 1:
        return None
    members, left = [seed], target
    for j, size in enumerate(sizes):
        take = min(len(by_size[size]), left // size)
        while not reach[j + 1] >> (left - take * size) & 1:
            take -= 1
        members += by_size[size][:take]
        left -= take * size
    return members if len(members) <= slots else None


def _fill_row(seed: int, pending: _Pending, capacity: int, slots: int) -> list[int]:
    """One row for the seed: the heuristic row if it is full, else an exact fill if the pending
    samples allow one (the heuristic misses some: ~9 % of rows on speech-like lengths at C = 1),
    else the heuristic row again."""
    counts = pending.counts
    members = _heuristic_row(seed, pending, capacity, slots)
    if sum(counts[i] for i in members) == capacity:
        return members
    for i in members:
        pending.add(i)
    exact = _exact_row(seed, pending, capacity, slots)
    if exact is None:
        return _heuristic_row(seed, pending, capacity, slots)
    for i in exact:
        pending.remove(i)
    return exact


def first_fit_rows(counts: Sequence[int], capacity: int, buffer: int, slots: int, max_wait: int) -> list[int]:
    """Row-by-row first-fit-decreasing over a look-ahead of up to ``buffer`` pending samples
    (each row by `_fill_row`: exact whenever the pending samples allow it).

    Each row is seeded with the largest pending sample, or with the oldest one once
    ``max_wait`` later samples have arrived (all such overdue samples are placed before
    more samples are read). Hence sample ``j`` never shares or precedes the row of sample
    ``i`` when ``j >= i + max_wait + buffer``. The input is drained at the end.
    """
    n = len(counts)
    rows = [-1] * n
    pending = _Pending(counts)
    arrived = oldest = n_rows = 0
    while arrived < n or pending:
        while len(pending) < buffer and arrived < n:
            pending.add(arrived)
            arrived += 1
        while pending:
            while rows[oldest] >= 0:
                oldest += 1
            overdue = arrived - oldest > max_wait
            seed = oldest if overdue else pending.largest()
            for i in _fill_row(seed, pending, capacity, slots):
                rows[i] = n_rows
            n_rows += 1
            if not overdue:
                break
    return rows
