"""Our own lines from Ray Train workers, printed by the driver.

Ray forwards its workers' output only with `--verbose` (and then prefixed, among its own lines),
so a worker's progress, warnings and resume notes travel through a Ray queue that the driver
empties onto its own stdout and stderr while training runs.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CONSOLE = "console"  # the key of the queue in the workers' `train_loop_config`
END = None  # put by the driver after the run: every worker line is ahead of it in the queue


class Console:
    """A worker's way to the driver's terminal: a queue from `relay`, or (None) its own stdout."""

    def __init__(self, queue=None):
        self.queue = queue

    def say(self, message: str, error: bool = False) -> None:
        if self.queue is None:
            print(message, file=sys.__stderr__ if error else sys.__stdout__, flush=True)
        else:
            self.queue.put((error, message))


@contextmanager
def relay() -> Iterator[object]:
    """A Ray queue whose lines are printed here while the block runs; the last ones are printed
    before the block's exit returns (a worker's `put` is done before its training function ends,
    so its lines are queued ahead of the END the block's exit puts). The pump blocks on the queue
    rather than polling it: no calls while the run is silent."""
    from ray.exceptions import RayError
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})

    def pump() -> None:
        while True:
            try:
                item = queue.get()
            except RayError as failure:  # the queue's actor is gone (its node died): nothing more arrives
                reason = str(failure).strip().splitlines()[0]
                print(f"WARNING: the workers' lines are no longer printed: {reason}", file=sys.stderr, flush=True)
                return
            if item is END:
                return
            error, message = item
            print(message, file=sys.stderr if error else sys.stdout, flush=True)

    thread = threading.Thread(target=pump, name="elasticast-console", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        try:
            queue.put(END)
        except RayError:  # the pump has already stopped on the same error
            pass
        thread.join()
        queue.shutdown(force=True)  # the pump is done with it
