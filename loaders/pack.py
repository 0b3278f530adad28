"""Decide which samples share a token row, from token counts alone (no audio).

Modes:

- ``greedy``: the paper's next-fit. Samples stay in arrival order and a new row starts
  whenever the next sample does not fit; each run of ``buffer`` samples is packed on
  its own, like one packing call per batch (``buffer=len(counts)`` packs them all).
- ``first_fit``: builds one row at a time from a look-ahead of up to ``buffer`` pending
  samples: the largest pending sample, then the largest that still fits, then the gap is
  closed by swapping a member for a better-fitting pending pair. If a gap remains (~9 % of
  rows on speech-like lengths at C = 1) and some pending samples fill the seed's row
  exactly, the row is that exact fill instead (a subset-sum over the pending sizes). Unused
  samples carry over to later rows. A sample becomes overdue once ``max_wait`` later samples have
  arrived; overdue samples seed rows before anything else is read, so sample ``j``
  always lands in a later row than sample ``i`` when ``j >= i + max_wait + buffer``.

Both modes are deterministic (ties go to the lower index) and number rows from 0 in
emission order. Counts and capacity are first divided by the counts' greatest common
divisor (tokens come in whole patch columns of 8): the same rows, smaller numbers, and a
row is full once less than that unit is left. greedy is O(n); first_fit is O(n * distinct
sizes) plus, for each row that gap closing leaves short, a subset-sum costing O(distinct
sizes * capacity / 64 * capacity / smallest size) word operations; it needs
O(n + capacity * min(buffer, capacity) / 64) memory.

Counts must already fit a row: cropping is the caller's job (see
`loaders.tokens.token_counts`, which crops to ``capacity`` and reports the cut).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from loaders import _pack_reference

Mode = Literal["greedy", "first_fit"]
Engine = Literal["numba", "python"]
MODES = ("greedy", "first_fit")
ENGINES = ("numba", "python")
DEFAULT_WAIT_BUFFERS = 4  # default max_wait, in buffers: enough look-ahead to close gaps


def pack(
    token_counts: ArrayLike,
    capacity: int = 2048,
    mode: Mode = "first_fit",
    buffer: int = 256,
    *,
    max_per_row: int | None = None,
    max_wait: int | None = None,
    engine: Engine = "numba",
) -> np.ndarray:
    """Row id (int64, from 0 in emission order) of each sample.

    token_counts: tokens per sample, each in ``1..capacity``.
    buffer: samples the packer considers together (see the module docstring).
    max_per_row: most samples per row (pooling slots); None for no limit.
    max_wait: first_fit only; later arrivals after which a pending sample is overdue
        (default ``4 * buffer``).
    engine: ``numba`` (fast) or ``python`` (the readable reference; same result).
    """
    capacity = _check_at_least("capacity", capacity, 1)
    counts = _checked_counts(token_counts, capacity)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    _check_at_least("buffer", buffer, 1)
    slots = capacity if max_per_row is None else _check_at_least("max_per_row", max_per_row, 1)
    wait = DEFAULT_WAIT_BUFFERS * buffer if max_wait is None else _check_at_least("max_wait", max_wait, 0)
    if mode == "first_fit" and counts.size:  # the same rows in units of e.g. 8 tokens, with smaller exact-fill bit sets
        unit = int(np.gcd.reduce(counts))
        counts, capacity = counts // unit, capacity // unit
    if engine == "python":
        packers = _pack_reference
        counts = counts.tolist()
    else:
        from loaders import _pack_numba as packers
    if mode == "greedy":
        rows = packers.greedy_rows(counts, capacity, buffer, slots)
    else:
        rows = packers.first_fit_rows(counts, capacity, buffer, slots, wait)
    return np.asarray(rows, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Packing:
    """Where every sample sits: its row, its first token in the row, and row fills.

    Inside a row, samples are laid out in index order (arrival order).
    """

    row: np.ndarray
    offset: np.ndarray
    row_fill: np.ndarray
    capacity: int

    @classmethod
    def from_rows(cls, token_counts: ArrayLike, row: ArrayLike, capacity: int) -> Packing:
        """Lay out samples given their row ids (as returned by `pack`)."""
        from loaders._pack_numba import row_layout

        capacity = _check_at_least("capacity", capacity, 1)
        counts = _checked_counts(token_counts, capacity)
        row = np.ascontiguousarray(row, dtype=np.int64)
        if row.shape != counts.shape:
            raise ValueError(f"row has shape {row.shape}, token_counts has {counts.shape}")
        if row.size and row.min() < 0:
            raise ValueError(f"row ids must be >= 0, got {int(row.min())}")
        per_row = np.bincount(row)
        if not per_row.all():
            raise ValueError(f"row ids must number rows from 0 without gaps; row {int(per_row.argmin())} is empty")
        n_rows = per_row.size
        offset, fill = row_layout(counts, row, n_rows)
        if fill.size and fill.max() > capacity:
            raise ValueError(f"row {int(fill.argmax())} holds {int(fill.max())} tokens > capacity {capacity}")
        for array in (row, offset, fill):
            array.flags.writeable = False
        return cls(row=row, offset=offset, row_fill=fill, capacity=capacity)

    @property
    def n_rows(self) -> int:
        return int(self.row_fill.size)

    @property
    def pad_ratio(self) -> float:
        """Share of row tokens that are padding (0.0 when there are no rows)."""
        total = self.n_rows * self.capacity
        return 1.0 - int(self.row_fill.sum()) / total if total else 0.0

    def members(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, starts): samples of row r are ``order[starts[r]:starts[r + 1]]``, by offset."""
        order = np.argsort(self.row, kind="stable")
        starts = np.zeros(self.n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.row, minlength=self.n_rows), out=starts[1:])
        return order, starts


def _checked_counts(token_counts: ArrayLike, capacity: int) -> np.ndarray:
    counts = np.asarray(token_counts)
    if counts.ndim != 1:
        raise ValueError(f"token_counts must be 1-D, got shape {counts.shape}")
    if counts.size == 0:
        return counts.astype(np.int64)
    if counts.dtype.kind not in "iu":
        raise TypeError(f"token_counts must be integers, got dtype {counts.dtype}")
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if counts.min() < 1 or counts.max() > capacity:
        bad = np.flatnonzero((counts < 1) | (counts > capacity))
        i = int(bad[0])
        raise ValueError(
            f"token_counts[{i}] = {int(counts[i])} is outside 1..capacity ({capacity}); "
            f"{bad.size} such sample(s): crop them first (loaders.tokens.token_counts)"
        )
    return counts


def _check_at_least(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
