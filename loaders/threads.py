"""Torch's intra-op thread count for featurizing, set for a block and restored after it.

Featurizing runs many small per-clip ops; on a busy host more threads only contend for the
cores (an epoch ran 13-37x slower with 2 threads than with 1 on a loaded 2-core machine), so
featurizing processes run with one thread by default. The caller's own count comes back after
each block, so a trainer that featurizes in-process keeps its threads for its model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch threads (None: as they are), then restore the caller's."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
