"""Where a build writes and how it commits: the one place where a local and a remote --out differ.

Local: the set is built in OUT/.building and renamed into place when complete, so a failed build
leaves a former set in OUT as it was.

Remote (s3://, gs://, ...): an object store has no rename, but one PUT is all-or-nothing, so every
object is written straight to its final name, complete or absent, and the set commits by its
`dataset.json`, written last. `--overwrite` first deletes the former `dataset.json`, so the prefix
looks incomplete for as long as old and new objects are mixed; the former set's objects that the
new one lacks (higher-numbered shards, other splits) are deleted just before the new `dataset.json`
is written. A crash at any point leaves a prefix without `dataset.json`, which readers refuse.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from shards.location import PROBE_PREFIX, Location
from shards.options import DATASET_FILE
from shards.retry import retrying

STAGING = ".building"
# what a remote build leaves before its dataset.json: a set a later --overwrite may replace
SET_OBJECT = re.compile(r"^[A-Za-z0-9_-]+/(shard-\d{6}\.tar|index\.parquet)$")


class OutputError(Exception):
    """The output folder cannot take the shard set (read-only, full, no such bucket, ...); names it."""


def check_output(out: Location, overwrite: bool) -> None:
    """Preflight of a remote --out before any input is read: it is empty (or, with `overwrite`, a
    shard set) and writable (a probe object is written and deleted). A local --out is checked when
    `prepare_output` makes its staging folder."""
    if out.is_local:
        return
    if out.is_read_only:
        raise OutputError(f"cannot write to --out {out}: {out.protocol}:// locations are read-only")
    try:
        _check_replaceable(out, out.find(), overwrite)
        out.check_writable()
    except FileExistsError:
        raise
    except Exception as exc:  # no bucket, no permission, no credentials, no such host: all one message
        raise OutputError(f"cannot write to --out {out}: {str(exc) or type(exc).__name__}") from None


def prepare_output(out: Location, overwrite: bool) -> Location:
    """Where the build writes. Local: refuse to mix with an existing folder (with `overwrite`,
    accept only a former shard set, which stays untouched until the new one is complete); returns
    the empty staging folder. Remote: `out` itself (`check_output` has run)."""
    if not out.is_local:
        return out
    root = out.local
    if root.exists() and any(p.name != STAGING for p in root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} exists and is not empty (use --overwrite to replace it)")
        if not (root / DATASET_FILE).is_file() and not any(root.glob("*/.shard-*.partial")):
            raise FileExistsError(
                f"refusing to --overwrite {out}: it does not look like a shard set (no {DATASET_FILE})"
            )
    staging = root / STAGING
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
        staging.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    return Location.of(staging)


def unmark(root: Location) -> None:
    """Before the first shard: delete a former `dataset.json` (only a remote overwrite has one), so
    the set is visibly incomplete until the new one is written."""
    (root / DATASET_FILE).remove()


def remove_stale(root: Location, keep: set[str]) -> None:
    """Before the new `dataset.json`: delete every object under a remote `root` but `keep` (paths
    relative to it), i.e. what a former set had and the new one lacks. A local build writes into a
    fresh staging folder: nothing is stale there."""
    if root.is_local:
        return
    stale = [f"{root.path}/{name}" for name in root.find() if name not in keep]
    if stale:
        retrying(lambda: root.fs.rm(stale), f"delete {len(stale)} former object(s) under {root}")


def publish(out: Location) -> None:
    """Local: move the staged set into `out`, replacing the former one (renames within one folder,
    dataset.json last). Remote: nothing left to do, `dataset.json` was the last object written."""
    if not out.is_local:
        return
    root = out.local
    staging, replaced = root / STAGING, root / ".replaced"
    shutil.rmtree(replaced, ignore_errors=True)
    replaced.mkdir()
    for entry in root.iterdir():
        if entry.name not in (STAGING, replaced.name):
            os.replace(entry, replaced / entry.name)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == DATASET_FILE):  # dataset.json last
        os.replace(entry, root / entry.name)
    staging.rmdir()
    shutil.rmtree(replaced)


def discard(out: Location, created: bool) -> None:
    """After a failed build: drop the staging folder, and `out` too if this run created it. A remote
    `out` this run created loses what it wrote (best effort); a replaced one is left without
    `dataset.json` (incomplete, which readers refuse and a new --overwrite accepts)."""
    if out.is_local:
        shutil.rmtree(out.local if created else out.local / STAGING, ignore_errors=True)
    elif created:
        try:
            out.remove(recursive=True)
        except Exception as exc:  # the store may be what failed; the set has no dataset.json either way
            print(
                f"warning: could not remove the partial set at {out} ({exc}); it has no {DATASET_FILE}, "
                "so readers refuse it",
                file=sys.stderr,
            )


def _check_replaceable(out: Location, names: list[str], overwrite: bool) -> None:
    names = [name for name in names if not name.startswith(PROBE_PREFIX)]  # left by an interrupted preflight
    if not names:
        return
    if not overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty (use --overwrite to replace it)")
    if DATASET_FILE not in names and not all(SET_OBJECT.match(name) for name in names):
        raise FileExistsError(f"refusing to --overwrite {out}: it does not look like a shard set (no {DATASET_FILE})")
