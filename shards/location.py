"""`Location`: one way to name a file or folder, local or remote.

    Location.of("data/demo")                      a local path (made absolute)
    Location.of("file:///data/shards")              the same, as a URL
    Location.of("s3://bucket/prefix")               S3 or any S3-compatible server (s3fs)
    Location.of("gs://bucket/prefix")               Google Cloud Storage (gcsfs)
    Location.of("https://host/shards")              read-only
    Location.of("memory://x"), ...                  anything else fsspec resolves

fsspec does the talking; credentials and endpoints come from each backend's own standard
configuration (for S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles,
instance roles), nothing is set here but the backends' own retries, which are turned off because
`shards.retry` retries and counts every call instead.

Writing: a local file is written under a temporary name, flushed and renamed, so it is complete
or absent; an object store has no rename, but one PUT is all-or-nothing, so an object is complete
or absent too. Folders that must appear at once (a shard set, a run) commit by writing one
marker file last (`dataset.json`).
"""

from __future__ import annotations

import io
import os
import posixpath
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, BinaryIO

import fsspec

from shards.retry import retrying

LOCAL_PROTOCOLS = ("file", "local")
READ_ONLY_PROTOCOLS = ("http", "https")
TEMP_PREFIX = ".tmp-"
PROBE_PREFIX = ".elasticast-write-probe-"  # what `check_writable` writes and removes
# each backend's own retries off (botocore's by option, s3fs's own loop by its `retries` attribute):
# shards.retry does them, and counts them; listings are not cached (other processes write too)
STORAGE_OPTIONS = {"s3": {"config_kwargs": {"retries": {"total_max_attempts": 1}}, "use_listings_cache": False}}
FILESYSTEM_ATTRIBUTES = {"s3": {"retries": 1}}


@dataclass(frozen=True)
class Location:
    """A file or folder by URL (local paths are kept as absolute paths). Picklable: only the URL
    travels; each process opens (and fsspec caches) its own filesystem."""

    url: str

    @classmethod
    def of(cls, value: str | os.PathLike | Location) -> Location:
        if isinstance(value, Location):
            return value
        text = os.fspath(value)
        protocol = _protocol(text)
        if protocol in LOCAL_PROTOCOLS:
            return cls(str(Path(text.split("://", 1)[-1]).absolute()))
        return cls(text.rstrip("/") if "://" in text.rstrip("/") else text)

    @property
    def protocol(self) -> str:
        return _protocol(self.url)

    @property
    def is_local(self) -> bool:
        return self.protocol in LOCAL_PROTOCOLS

    @property
    def is_read_only(self) -> bool:
        return self.protocol in READ_ONLY_PROTOCOLS

    @property
    def can_list(self) -> bool:
        """Whether a folder's contents can be listed (a plain web server cannot say)."""
        return self.protocol not in READ_ONLY_PROTOCOLS

    @property
    def local(self) -> Path:
        """The local path; a remote location is an error (for code that needs a real file)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return Path(self.url)

    @cached_property
    def _fs_and_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(self.url, **STORAGE_OPTIONS.get(self.protocol, {}))
        for name, value in FILESYSTEM_ATTRIBUTES.get(self.protocol, {}).items():
            setattr(fs, name, value)
        return fs, path

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_and_path[0]

    @property
    def path(self) -> str:
        """The path as the filesystem names it (`bucket/prefix` for S3)."""
        return self._fs_and_path[1]

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    @property
    def parent(self) -> Location:
        return Location(posixpath.dirname(self.url.rstrip("/")))

    def __truediv__(self, name: str) -> Location:
        return Location(str(Path(self.url) / name) if self.is_local else f"{self.url.rstrip('/')}/{name}")

    def __str__(self) -> str:
        return self.url

    def __reduce__(self):
        return (Location, (self.url,))

    def __fspath__(self) -> str:
        """Only local locations are paths: `open(location)` on a URL is an error, not a local file."""
        return str(self.local)

    def _retrying(self, call, what: str):
        """`call()`, retried if remote; a refusal or a missing bucket is raised naming this URL
        (the backends' own messages do not say which object they were about)."""
        if self.is_local:
            return call()
        try:
            return retrying(call, f"{what} {self.url}")
        except PermissionError as error:
            raise PermissionError(
                f"{what} {self.url}: access denied ({error}); check the credentials for {self.protocol}://"
            ) from error
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{what} {self.url}: {error}") from error

    def info(self) -> dict | None:
        """The filesystem's facts about this file or folder (`type`, `size`, ...), None if there is
        none. Asked directly: fsspec's exists/isfile answer False on any error, a 503 included."""

        def call():
            try:
                return self.fs.info(self.path)
            except FileNotFoundError:
                return None

        return self._retrying(call, "info")

    def exists(self) -> bool:
        return self.info() is not None

    def is_file(self) -> bool:
        return (self.info() or {}).get("type") == "file"

    def is_dir(self) -> bool:
        return (self.info() or {}).get("type") == "directory"

    def names(self) -> list[str]:
        """The names directly in this folder (empty if there is none)."""
        if not self.is_dir():
            return []
        listed = self._retrying(lambda: self.fs.ls(self.path, detail=False), "list")
        return sorted(posixpath.basename(p.rstrip("/")) for p in listed)

    def find(self) -> list[str]:
        """Every file below this folder, as sorted paths relative to it (one recursive listing;
        empty if there is none)."""
        prefix = self.path.rstrip("/") + "/"
        found = self._retrying(lambda: self.fs.find(self.path), "list")
        return sorted(path[len(prefix) :] for path in found if path.startswith(prefix))

    def read_bytes(self) -> bytes:
        return self._retrying(lambda: self.fs.cat_file(self.path), "read")

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open(self, mode: str = "rb") -> IO:
        """A file object (reads of a remote one are buffered ranged requests, not retried: for
        streaming a whole file; use `read_bytes` or `shards.ranged` for retried reads)."""
        return self.fs.open(self.path, mode)

    def write(self, writer: Callable[[BinaryIO], None]) -> None:
        """`writer(handle)` into this file, complete or absent: a local file streamed to a temporary
        name, fsynced and renamed (no copy in memory); an object collected in memory, then one PUT."""
        self._check_writable()
        if not self.is_local:
            buffer = io.BytesIO()
            writer(buffer)
            self._retrying(lambda: self.fs.pipe_file(self.path, buffer.getvalue()), "write")
            return
        self.local.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.local.with_name(f"{TEMP_PREFIX}{self.name}.{os.getpid()}-{threading.get_ident()}")
        try:
            with open(temporary, "wb") as handle:
                writer(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.local)
        finally:
            temporary.unlink(missing_ok=True)

    def write_bytes(self, data: bytes) -> None:
        self.write(lambda handle: handle.write(data))

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def upload(self, source: Path) -> None:
        """Copy the local file `source` here (an object: one PUT, or a multipart upload that only
        appears when complete)."""
        self._check_writable()
        if self.is_local:
            self.write_bytes(Path(source).read_bytes())
        else:
            self._retrying(lambda: self.fs.put_file(str(source), self.path), "upload to")

    def rename(self, target: Location) -> None:
        """Move this file to `target` in the same store (an object store copies, then deletes)."""
        self._check_writable()
        if self.is_local:
            os.replace(self.local, target.local)
        else:
            self._retrying(lambda: self.fs.mv(self.path, target.path), "move")

    def mkdir(self) -> None:
        """A local folder (and its parents); object stores have no folders, so nothing to do there."""
        if self.is_local:
            self.local.mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """Write and remove a small probe object in this folder: a missing bucket, a wrong prefix,
        no write or delete permission or a read-only location fail here, before any real work."""
        probe = self / f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.remove()

    def remove(self, recursive: bool = False) -> None:
        """Delete this file (or folder, with `recursive`); a missing one is not an error."""
        self._check_writable()
        if self.exists():
            self._retrying(lambda: self.fs.rm(self.path, recursive=recursive), "remove")

    def _check_writable(self) -> None:
        if self.is_read_only:
            raise PermissionError(f"{self.url}: {self.protocol}:// locations are read-only")


def _protocol(text: str) -> str:
    return text.split("://", 1)[0].lower() if "://" in text else "file"
