"""WebDataset tar files: one `<key>.wav` (PCM16) and one `<key>.json` per sample.

Written with plain `tarfile` and fixed member metadata so the same input gives byte-identical
shards; read back in streaming mode so a truncated shard still yields every whole sample
before it, and each failure names the shard and key. Shards may lie anywhere a `Location` names. Each wav's XXH3-64 goes into the index;
readers check it, and random access also checks the tar header in front of the bytes, so a
flipped byte or a misplaced offset is a named failure, never another clip delivered.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.audio import decode_pcm16
from shards.checksum import checksum, checksum_problem
from shards.location import Location
from shards.ranged import Span, read_spans
from shards.retry import StorageFailure, http_status


@dataclass(frozen=True)
class Member:
    """Where a sample's audio lies inside its shard, for random access without a scan."""

    offset: int
    nbytes: int
    xxh3_64: int | None = None  # of the wav bytes; None in shard sets made before checksums


class IntegrityError(ValueError):
    """A member whose bytes are not what the index says they are."""


@dataclass(frozen=True)
class ShardSample:
    key: str
    audio: np.ndarray
    sample_rate: int
    meta: dict


@dataclass(frozen=True)
class ShardError:
    """A sample (or the rest of a shard, when `key` is None) that could not be read."""

    shard: str
    key: str | None
    reason: str


class ShardWriter:
    """Writes one shard under a temporary name, so a crash never leaves a shard that looks complete:
    a local one next to its final name, renamed by `close()`; a remote one in a local temporary
    file, uploaded by `close()` as one object (complete or absent) and then deleted."""

    def __init__(self, path: str | Path | Location):
        self.location = Location.of(path)
        if self.location.is_local:
            self._partial = self.location.local.with_name(f".{self.location.name}.partial")
        else:
            handle, name = tempfile.mkstemp(prefix=f".{self.location.name}.", suffix=".partial")
            os.close(handle)
            self._partial = Path(name)
        self._tar = tarfile.open(self._partial, "w", format=tarfile.PAX_FORMAT)

    @property
    def name(self) -> str:
        return self.location.name

    def add(self, key: str, wav: bytes, meta: dict) -> Member:
        member = self._add_file(f"{key}.wav", wav)
        self._add_file(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        return Member(member.offset, member.nbytes, checksum(wav))

    def _add_file(self, name: str, data: bytes) -> Member:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return Member(offset=self._tar.offset - padded, nbytes=len(data))

    def close(self) -> None:
        self._tar.close()
        if self.location.is_local:
            os.replace(self._partial, self.location.local)
            return
        try:
            self.location.upload(self._partial)
        except OSError:
            raise
        except Exception as exc:  # a backend's own error type (no connection, no credentials): one kind for callers
            raise OSError(f"upload to {self.location} failed: {exc}") from exc
        self._partial.unlink()

    def abort(self) -> None:
        """Drop the partial file; never raises (it runs while another error, e.g. a full disk,
        is on its way up)."""
        try:
            self._tar.close()
        except OSError:
            pass
        self._partial.unlink(missing_ok=True)


def read_shard(
    shard: str | Path | Location, checksums: dict[str, int | None] | None = None
) -> Iterator[ShardSample | ShardError]:
    """Every sample of a shard (a path or URL) in stored order; unreadable ones come as `ShardError`s.

    `checksums` (key -> XXH3-64 from the index): each wav is checked against it, and a member
    the index does not list is an error too (it would never be used)."""
    location = Location.of(shard)
    name = str(location)
    pending: dict[str, dict[str, bytes]] = {}
    last_key = None
    try:
        with location.open("rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if last_key is not None and key != last_key:
                    yield _sample_or_error(name, last_key, pending.pop(last_key), checksums)
                last_key = key
                pending.setdefault(key, {})[ext] = tar.extractfile(info).read() if info.isfile() else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        pending.pop(last_key, None)
        yield ShardError(name, None, f"shard unreadable after key {last_key!r}: {exc}")
        return
    if last_key is not None:
        yield _sample_or_error(name, last_key, pending.pop(last_key), checksums)


def read_member(shard: str | Path | Location, key: str, member: Member) -> tuple[np.ndarray, int]:
    """One sample's audio by its index offset: one ranged read of its tar header and bytes, both
    checked (`IntegrityError` says what is wrong), no scan of the shard."""
    location = Location.of(shard)
    [data], _ = read_spans([member_span(location, member)])
    check_read(location, data)
    problem = member_problem(data, key, member)
    if problem:
        raise IntegrityError(f"{location} {key}: {problem}")
    return decode_pcm16(data[tarfile.BLOCKSIZE :])


def member_span(shard: Location, member: Member) -> Span:
    """What to read for a member: its tar header and its bytes."""
    return Span(shard, max(member.offset - tarfile.BLOCKSIZE, 0), member.offset + member.nbytes)


def check_read(shard: Location, data: bytes | Exception) -> None:
    """Raise the storage's failure behind a member's read, if that is why it failed: the store
    unreachable for the whole time budget, the shard or its bucket gone, access refused. Never a
    hole: a job stops on it. (A range past the end of the shard is the shard's own problem.)"""
    if not isinstance(data, Exception) or http_status(data) == 416:
        return
    if isinstance(data, StorageFailure):
        raise data
    raise StorageFailure(f"cannot read {shard}: {data}") from data


def member_problem(data: bytes | Exception, key: str, member: Member) -> str | None:
    """Why `data`, read for `member_span(member)`, is not `key`'s wav as the index describes it
    (None if it is): a shard that ends early, a header naming another member, a checksum that
    differs. A failed read other than a range past the end is `check_read`'s, called first."""
    if member.offset < tarfile.BLOCKSIZE or member.offset % tarfile.BLOCKSIZE:
        return f"offset {member.offset} is not where a tar member's data can start"
    if isinstance(data, Exception) or len(data) <= tarfile.BLOCKSIZE:  # an error here: HTTP 416
        return f"offset {member.offset} is past the end of the shard"
    if len(data) < tarfile.BLOCKSIZE + member.nbytes:
        missing = tarfile.BLOCKSIZE + member.nbytes - len(data)
        return f"shard truncated: it ends {missing} bytes before the member does"
    problem = header_problem(data[: tarfile.BLOCKSIZE], key, member.nbytes)
    if problem is None and member.xxh3_64 is not None:
        problem = checksum_problem(checksum(memoryview(data)[tarfile.BLOCKSIZE :]), member.xxh3_64)
    return problem


def header_problem(header: bytes, key: str, nbytes: int) -> str | None:
    """Why the 512-byte tar header in front of a member's data is not `key`'s wav of `nbytes`
    bytes (None if it is). Names over 100 characters sit in a PAX record before it; the header
    itself keeps their first 100."""
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return "no tar header in front of the indexed offset (the index does not match this shard)"
    expected = f"{key}.wav"[:100]
    if info.name != expected:
        return f"the tar member at this offset is {info.name!r}, not {expected!r} (the index does not match this shard)"
    if info.size != nbytes:
        return f"the tar member holds {info.size} bytes where the index has {nbytes}"
    return None


def _sample_or_error(
    shard: str, key: str, parts: dict[str, bytes], checksums: dict[str, int | None] | None
) -> ShardSample | ShardError:
    if "wav" not in parts or "json" not in parts:
        return ShardError(shard, key, f"incomplete sample: has {sorted(parts)}, needs wav and json")
    if checksums is not None:
        if key not in checksums:
            return ShardError(shard, key, "member not in the index (it would never be read by a stream)")
        if checksums[key] is not None and (problem := checksum_problem(checksum(parts["wav"]), checksums[key])):
            return ShardError(shard, key, problem)
    try:
        audio, rate = decode_pcm16(parts["wav"])
        meta = json.loads(parts["json"])
    except Exception as exc:  # any decode failure is reported per key, never fatal for the shard
        return ShardError(shard, key, f"undecodable sample: {exc}")
    return ShardSample(key, audio, rate, meta)
