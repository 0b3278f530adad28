"""Training checkpoints that are complete or invisible, and writes to the run folder that fail
once, clearly, when retrying cannot help.

Every file is written under a hidden temporary name in its folder, flushed to disk, then renamed
into place: a crash or a full disk leaves the previous file (or none), never a truncated one.
A checkpoint is one file named by its stream position, `epoch-EEEE-step-SSSSSSS.pt` (the next
step to run), so the latest is the greatest name; the store keeps the `keep` latest.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

# failures of the storage itself: the same write fails again on a retry
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})-step-(\d{7,})\.pt$")
TEMP_PREFIX = ".tmp-"
CHECKPOINTS = "checkpoints"  # the run folder's subfolder of full training states
KEEP_CHECKPOINTS = 2


class RunStorageError(RuntimeError):
    """A write to the run folder failed for a reason a retry cannot fix (no space, no permission)."""


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary_path)`, then rename the result to `path`. A storage failure becomes a
    `RunStorageError` naming `path`; the temporary file is removed whatever happens."""
    path = Path(path)
    temporary = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        cause = storage_cause(error)
        if cause is not None:
            raise RunStorageError(f"cannot write {path}: {cause.strerror or cause}") from error
        raise


def storage_cause(error: BaseException) -> OSError | None:
    """The storage failure behind `error`, if any: torch.save, for one, reports a failed write of
    its file object as a RuntimeError raised while handling the OSError."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text))


def save_torch(path: Path, value) -> None:
    """torch.save through a Python file object, so that a failed write surfaces as its OSError."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            torch.save(value, handle)

    write_atomic(path, write)


class CheckpointStore:
    """The training checkpoints of one run, in `folder`: the `keep` latest complete ones."""

    def __init__(self, folder: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder, self.keep = Path(folder), keep

    @staticmethod
    def name(epoch: int, next_step: int) -> str:
        return f"epoch-{epoch:04d}-step-{next_step:07d}.pt"

    def complete(self) -> list[Path]:
        """Committed checkpoints, oldest first (temporary files of interrupted writes are not listed)."""
        if not self.folder.is_dir():
            return []
        found = [
            (tuple(map(int, m.groups())), p) for p in self.folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))
        ]
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        complete = self.complete()
        return complete[-1] if complete else None

    def save(self, state: dict, epoch: int, next_step: int) -> Path:
        """Commit `state` as the checkpoint at (epoch, next_step), then drop all but the `keep` latest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.name(epoch, next_step)
        save_torch(path, state)
        self.prune()
        return path

    def prune(self) -> None:
        """Remove all but the `keep` latest checkpoints, and temporary files left by crashed writers.
        Only one process writes a run's checkpoints at a time (rank 0 of the one running attempt)."""
        for path in self.complete()[: -self.keep]:
            path.unlink(missing_ok=True)
        for path in self.folder.glob(f"{TEMP_PREFIX}*"):
            path.unlink(missing_ok=True)

    @staticmethod
    def load(path: Path) -> dict:
        return torch.load(path, weights_only=False)  # our own file: optimiser state, RNG states, history
