"""WebDataset tar files: one `<key>.wav` (PCM16) and one `<key>.json` per sample.

Written with plain `tarfile` and fixed member metadata so the same input gives byte-identical
shards; read back in streaming mode so a truncated shard still yields every whole sample
before it, and each failure names the shard and key.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from shards.audio import decode_pcm16


@dataclass(frozen=True)
class Member:
    """Where a sample's audio lies inside its shard, for random access without a scan."""

    offset: int
    nbytes: int


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
    """Writes one shard under a temporary name; `close()` renames it, so a crash never
    leaves a file that looks complete."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self._tar = tarfile.open(self._partial, "w", format=tarfile.PAX_FORMAT)

    def add(self, key: str, wav: bytes, meta: dict) -> Member:
        member = self._add_file(f"{key}.wav", wav)
        self._add_file(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        return member

    def _add_file(self, name: str, data: bytes) -> Member:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return Member(offset=self._tar.offset - padded, nbytes=len(data))

    def close(self) -> None:
        self._tar.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        self._tar.close()
        self._partial.unlink(missing_ok=True)


def read_shard(path: str | Path) -> Iterator[ShardSample | ShardError]:
    """Every sample of a shard in stored order; unreadable ones come as `ShardError`s."""
    path = str(path)
    pending: dict[str, dict[str, bytes]] = {}
    last_key = None
    try:
        with tarfile.open(path, "r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if last_key is not None and key != last_key:
                    yield _sample_or_error(path, last_key, pending.pop(last_key))
                last_key = key
                pending.setdefault(key, {})[ext] = tar.extractfile(info).read() if info.isfile() else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        pending.pop(last_key, None)
        yield ShardError(path, None, f"shard unreadable after key {last_key!r}: {exc}")
        return
    if last_key is not None:
        yield _sample_or_error(path, last_key, pending.pop(last_key))


def read_member(path: str | Path, member: Member) -> tuple[np.ndarray, int]:
    """One sample's audio by its index offset: a seek and a read, no scan of the shard."""
    with open(path, "rb") as handle:
        handle.seek(member.offset)
        return decode_pcm16(handle.read(member.nbytes))


def _sample_or_error(shard: str, key: str, parts: dict[str, bytes]) -> ShardSample | ShardError:
    if "wav" not in parts or "json" not in parts:
        return ShardError(shard, key, f"incomplete sample: has {sorted(parts)}, needs wav and json")
    try:
        audio, rate = decode_pcm16(parts["wav"])
        meta = json.loads(parts["json"])
    except Exception as exc:  # any decode failure is reported per key, never fatal for the shard
        return ShardError(shard, key, f"undecodable sample: {exc}")
    return ShardSample(key, audio, rate, meta)
