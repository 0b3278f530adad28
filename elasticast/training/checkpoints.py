"""Training checkpoints that are complete or invisible, and writes to the run folder that fail
once, clearly, when retrying cannot help. The run folder is any `shards.location.Location`: a
local folder or an object-store URL (`s3://bucket/runs/x`).

A local file is written under a hidden temporary name in its folder, flushed to disk, then
renamed into place: a crash or a full disk leaves the previous file (or none), never a truncated
one. An object is written in one PUT, which the store applies whole or not at all. A checkpoint
is one file named by its stream position, `epoch-EEEE-step-SSSSSSS.pt` (the next step to run),
so the latest is the greatest name; the store keeps the `keep` latest.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

import torch

from elasticast.checkpoint import read_torch
from shards.location import TEMP_PREFIX, Location

# failures of the storage itself: the same write fails again on a retry
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
# an object store's refusals: no such bucket, no permission (read-only http:// included)
STORAGE_REFUSALS = (FileNotFoundError, PermissionError)
CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})-step-(\d{7,})\.pt$")
CHECKPOINTS = "checkpoints"  # the run folder's subfolder of full training states
KEEP_CHECKPOINTS = 2

Target = str | os.PathLike | Location


class RunStorageError(RuntimeError):
    """A write to the run folder failed for a reason a retry cannot fix (no space, no permission,
    no such bucket)."""


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """A storage failure inside becomes a `RunStorageError` saying `what: reason`."""
    try:
        yield
    except BaseException as error:
        cause = storage_cause(error)
        if cause is not None:
            raise RunStorageError(f"{what}: {cause.strerror or cause}") from error
        raise


def storage_cause(error: BaseException) -> OSError | None:
    """The storage failure behind `error`, if any, the innermost (the store's own words): torch.save,
    for one, reports a failed write of its file object as a RuntimeError raised while handling the
    OSError, and `Location` re-raises a store's refusal with the URL in front."""
    found = None
    while error is not None:
        if isinstance(error, STORAGE_REFUSALS) or (isinstance(error, OSError) and error.errno in STORAGE_ERRNOS):
            found = error
        error = error.__cause__ or error.__context__
    return found


def write_atomic(target: Target, write: Callable[[BinaryIO], None]) -> None:
    """`write(handle)` into `target`, complete or absent: locally through a temporary file that is
    fsynced and renamed, remotely into memory and then one PUT. A storage failure becomes a
    `RunStorageError` naming `target`."""
    location = Location.of(target)
    with storage_errors(f"cannot write {location}"):
        location.write(write)


def write_text(target: Target, text: str) -> None:
    write_atomic(target, lambda handle: handle.write(text.encode()))


def save_torch(target: Target, value) -> None:
    """torch.save through a Python file object, so that a failed write surfaces as its OSError."""
    write_atomic(target, lambda handle: torch.save(value, handle))


class CheckpointStore:
    """The training checkpoints of one run, in `folder` (a path or URL): the `keep` latest complete ones."""

    def __init__(self, folder: Target, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder, self.keep = Location.of(folder), keep

    @staticmethod
    def name(epoch: int, next_step: int) -> str:
        return f"epoch-{epoch:04d}-step-{next_step:07d}.pt"

    def complete(self) -> list[Location]:
        """Committed checkpoints, oldest first (temporary files of interrupted writes are not listed)."""
        found = [
            (tuple(map(int, m.groups())), name) for name in self.folder.names() if (m := CHECKPOINT_NAME.match(name))
        ]
        return [self.folder / name for _, name in sorted(found)]

    def latest(self) -> Location | None:
        complete = self.complete()
        return complete[-1] if complete else None

    def save(self, state: dict, epoch: int, next_step: int) -> Location:
        """Commit `state` as the checkpoint at (epoch, next_step), then drop all but the `keep` latest."""
        location = self.folder / self.name(epoch, next_step)
        save_torch(location, state)
        self.prune()
        return location

    def prune(self) -> None:
        """Remove all but the `keep` latest checkpoints, and temporary files left by crashed writers.
        Only one process writes a run's checkpoints at a time (rank 0 of the one running attempt)."""
        leftovers = [self.folder / name for name in self.folder.names() if name.startswith(TEMP_PREFIX)]
        for location in self.complete()[: -self.keep] + leftovers:
            with storage_errors(f"cannot remove {location}"):
                location.remove()

    @staticmethod
    def load(location: Target) -> dict:
        return read_torch(location, weights_only=False)  # our own file: optimiser state, RNG states, history
