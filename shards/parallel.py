"""One function over many work items, on Ray Data (a local instance or a cluster) or in-process.

Both backends run the very same function on the very same JSON-able items, so `local` is a
faithful debugging and no-Ray path, and a baseline for the Ray benchmark. Items and results
cross Ray as JSON text: no Arrow schema guessing on nested or sometimes-null fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BACKENDS = ("ray", "local")


class _JsonCall:
    """Ray Data row function: decode the item, call `fn`, encode the result."""

    def __init__(self, fn: Callable[[dict], dict]):
        self.fn = fn

    def __call__(self, row: dict) -> dict:
        return {"result": json.dumps(self.fn(json.loads(row["item"])))}


def parallel_map(fn: Callable[[dict], dict], items: list[dict], backend: str = "ray") -> Iterator[dict]:
    """Yield `fn(item)` for every item, in completion order on Ray, in item order locally.

    Ray gets one block per item, so each item is one task's worth of work (callers pass
    coarse items: a chunk of files, a whole shard). Ray Data's own progress bars are turned
    off while this runs; callers show progress in the units that matter to them.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if not items:
        return
    if backend == "local":
        for item in items:
            yield json.loads(json.dumps(fn(item)))
        return
    import ray.data

    with quiet_ray_data():
        rows = [{"item": json.dumps(item)} for item in items]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map(_JsonCall(fn))
        for row in dataset.iter_rows():
            yield json.loads(row["result"])


@contextmanager
def quiet_ray_data(preserve_order: bool | None = None) -> Iterator[None]:
    """Ray Data's global context without progress bars and start-up lines (callers report
    progress in their own units), `preserve_order` set if given; all restored on exit."""
    import ray.data

    context = ray.data.DataContext.get_current()
    options = context.execution_options
    saved = options.preserve_order, context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = context.print_on_execution_start = False
    if preserve_order is not None:
        options.preserve_order = preserve_order
    try:
        yield
    finally:
        options.preserve_order, context.enable_progress_bars, context.print_on_execution_start = saved
