"""What to shard: sources listed from a folder or a manifest, with labels, split and a key.

Folders, manifests and the paths in manifests may be local or URLs (s3://, gs://, http(s)://,
file://: `shards.location`). Listing never touches audio; rows it cannot use become `Skipped`
records, never exceptions, so one bad row never stops a large job. Configuration mistakes (no such folder, a manifest
without the required columns) do raise, with the file named.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from shards.audio import AUDIO_EXTENSIONS
from shards.location import Location

SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
LABEL_CONFLICT = "label conflict"  # a row naming a file and segment listed before, with other labels


@dataclass(frozen=True)
class Source:
    """One future sample: a file (or a segment of it) with its labels and split."""

    key: str
    path: str
    labels: tuple[str, ...]
    split: str
    start_s: float | None = None
    end_s: float | None = None
    origin: str = ""  # where it was listed ("rows.csv:7"), for messages
    weight: float | None = None  # a manifest's `weight` (None: the class-balance rule, `shards.weights`)


@dataclass(frozen=True)
class Skipped:
    """An input left out, with a reason category (for counts) and a detail (for people)."""

    path: str
    reason: str
    detail: str


def stable_fraction(text: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the text alone: the same split on every machine and run."""
    digest = hashlib.sha1(f"{salt}{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for(relative_path: str, test_fraction: float, valid_fraction: float = 0.0) -> str:
    """test, valid or train by the path's stable hash: `test` takes the hashes below
    `test_fraction`, `valid` the next `valid_fraction`, so adding a valid split leaves test as it was."""
    fraction = stable_fraction(relative_path)
    return "test" if fraction < test_fraction else "valid" if fraction < test_fraction + valid_fraction else "train"


def make_key(relative_path: str, start_s: float | None = None, end_s: float | None = None) -> str:
    """WebDataset-safe key (no dots or slashes) from a path, plus the segment bounds if any."""
    stem = os.path.splitext(relative_path)[0]
    key = _KEY_UNSAFE.sub("_", stem).strip("_") or "sample"
    if start_s is not None or end_s is not None:
        first = "0" if start_s is None else f"{start_s * 1000:.0f}"
        last = "end" if end_s is None else f"{end_s * 1000:.0f}"
        key = f"{key}__{first}-{last}ms"
    return key


def dedupe_keys(sources: list[Source]) -> list[Source]:
    """Keys must be unique within a dataset; colliding ones get a suffix from their full path
    (and a counter when even that collides: the same file kept twice with --keep-duplicates)."""
    seen: set[str] = set()
    unique = []
    for source in sources:
        key = source.key
        if key in seen:
            base = f"{key}-{hashlib.sha1(f'{source.path}|{source.start_s}|{source.end_s}'.encode()).hexdigest()[:10]}"
            key, copy = base, 1
            while key in seen:
                copy += 1
                key = f"{base}-{copy}"
        seen.add(key)
        unique.append(replace(source, key=key))
    return unique


def list_folder(
    root: str | Path, test_fraction: float, label_regex: str | None = None, valid_fraction: float = 0.0
) -> tuple[list[Source], list[Skipped]]:
    """Audio files below `root` (a folder or URL prefix, sorted); label = parent folder name, or the
    regex's `label` group."""
    pattern = re.compile(label_regex) if label_regex else None
    if pattern is not None and "label" not in pattern.groupindex:
        raise ValueError(f"--label-regex {label_regex!r} needs a named group (?P<label>...)")
    sources, skipped = [], []
    for relative, path in _audio_files(root):
        name = posixpath.basename(relative)
        if pattern is None:
            label = posixpath.basename(posixpath.dirname(relative))
            if not label:
                skipped.append(Skipped(path, "no label", "file sits directly in --input; put it in a label folder"))
                continue
        else:
            match = pattern.search(name)
            if match is None or not match.group("label"):
                skipped.append(Skipped(path, "no label", f"--label-regex did not match {name!r}"))
                continue
            label = match.group("label")
        sources.append(Source(make_key(relative), path, (label,), split_for(relative, test_fraction, valid_fraction)))
    return dedupe_keys(sources), skipped


def _audio_files(root: str | Path) -> list[tuple[str, str]]:
    """(path relative to `root`, path or URL) of the audio files below it, sorted by path."""
    if not _is_url(root):
        folder = Path(root)
        if not folder.is_dir():
            raise FileNotFoundError(f"--input {folder} is not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        return [(p.relative_to(folder).as_posix(), str(p)) for p in paths]
    folder = Location.of(root)
    try:
        names = folder.find()
    except PermissionError as exc:
        raise PermissionError(f"--input {folder}: access denied ({exc})") from None
    except FileNotFoundError:
        names = []  # no such bucket
    if not names:
        raise FileNotFoundError(f"--input {folder} is not a folder (nothing is stored under it)")
    return [(n, str(folder / n)) for n in names if posixpath.splitext(n)[1].lower() in AUDIO_EXTENSIONS]


def read_manifest(
    path: str | Path, test_fraction: float, keep_duplicates: bool = False, valid_fraction: float = 0.0
) -> tuple[list[Source], list[Skipped]]:
    """Rows of a .csv or .jsonl manifest: `path`, `label` (';' joins several), optional `split`
    (any name, e.g. train, valid, test; empty: by the path's hash), `start`, `end` (seconds),
    `weight` (the sample's draw weight for balanced sampling, > 0; empty: the class-balance rule). The
    manifest and its paths may be URLs; relative paths resolve against the manifest's folder. A
    row naming the same file and segment as an earlier one is kept once (a "duplicate" skip names
    both lines) unless `keep_duplicates`."""
    location = Location.of(path)
    path = path if _is_url(path) else Path(path)
    try:
        if not location.is_file():
            raise FileNotFoundError(f"--manifest {path} does not exist")
        text = location.read_text()
    except PermissionError as exc:
        raise PermissionError(f"--manifest {path}: access denied ({exc})") from None
    try:
        rows = list(_manifest_rows(str(path), text))
    except csv.Error as exc:
        raise ValueError(f"manifest {path} is not readable CSV: {exc}") from None
    base = location.parent if _is_url(path) else path.parent
    sources, skipped = [], []
    for number, row in rows:
        where = f"{path}:{number}"
        try:
            sources.append(_source_from_row(row, base, (test_fraction, valid_fraction), where))
        except (ValueError, TypeError) as exc:
            shown = row.get("path") if isinstance(row.get("path"), str) and row.get("path") else where
            skipped.append(Skipped(shown, "invalid manifest row", f"{where}: {exc}"))
    if not keep_duplicates:
        sources, duplicates = drop_duplicates(sources)
        skipped += duplicates
    return dedupe_keys(_keys_from_common_folder(sources)), skipped


def drop_duplicates(sources: list[Source]) -> tuple[list[Source], list[Skipped]]:
    """The first source of each (real file, start, end); later ones as skips naming both places,
    so one recording is not trained twice per epoch under two keys: a "duplicate" when the labels
    agree, a "label conflict" (naming both labels) when they do not."""
    first_seen: dict[tuple, Source] = {}
    kept, duplicates = [], []
    for source in sources:
        identity = (
            source.path if _is_url(source.path) else os.path.realpath(source.path),
            source.start_s,
            source.end_s,
        )
        first = first_seen.get(identity)
        if first is None:
            first_seen[identity] = source
            kept.append(source)
        elif first.labels != source.labels:
            duplicates.append(
                Skipped(
                    source.path,
                    LABEL_CONFLICT,
                    f"{source.origin}: labelled {';'.join(source.labels)!r}, but {first.origin} labels the same "
                    f"file and segment {';'.join(first.labels)!r}; kept {first.origin}'s (fix the manifest)",
                )
            )
        else:
            duplicates.append(
                Skipped(
                    source.path,
                    "duplicate",
                    f"{source.origin}: same file and segment as {first.origin}; "
                    "kept once (--keep-duplicates keeps both)",
                )
            )
    return kept, duplicates


MANIFEST_COLUMNS = ("path", "label", "split", "start", "end", "weight")


def write_manifest(path: str | Path, rows: Iterable[dict]) -> Path:
    """A .csv manifest that `read_manifest` reads back: one dict per row with `path` and `label`
    (';' joins several) and optionally `split`, `start`, `end`, `weight`; columns no row uses are left out."""
    rows = list(rows)
    unknown = sorted({key for row in rows for key in row} - set(MANIFEST_COLUMNS))
    if unknown:
        raise ValueError(f"manifest columns {unknown} are not among {list(MANIFEST_COLUMNS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in MANIFEST_COLUMNS if any(c in row for row in rows)])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _keys_from_common_folder(sources: list[Source]) -> list[Source]:
    """Keys from paths relative to the rows' deepest common folder: short, and free of the
    machine's own folder names when a manifest lists absolute paths."""
    if not sources:
        return sources
    common = os.path.commonpath([os.path.dirname(_tree_path(s.path)) for s in sources])
    return [replace(s, key=make_key(os.path.relpath(_tree_path(s.path), common), s.start_s, s.end_s)) for s in sources]


def _tree_path(path: str) -> str:
    """An absolute path to make keys from: a URL as /scheme/bucket/..., so the same files give the
    same keys whether a manifest lists them by URL or by local path."""
    return "/" + path.replace("://", "/", 1) if _is_url(path) else os.path.abspath(path)


def _is_url(path: str | Path) -> bool:
    return "://" in str(path)


def _manifest_rows(path: str, text: str):
    suffix = posixpath.splitext(path)[1].lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"manifest {path} lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
        yield from enumerate(reader, start=2)
    elif suffix in (".jsonl", ".json"):
        for number, line in enumerate(io.StringIO(text), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                row = {"_error": f"not JSON ({exc.msg})"}
            yield number, row if isinstance(row, dict) else {"_error": "not a JSON object"}
    else:
        raise ValueError(f"manifest {path} must end in .csv or .jsonl")


def _source_from_row(row: dict, base: Path | Location, fractions: tuple[float, float], where: str) -> Source:
    if "_error" in row:
        raise ValueError(row["_error"])
    value = row.get("path")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"path {value!r} is not text")
    raw_path = (value or "").strip()
    if not raw_path:
        raise ValueError("empty path")
    if "\0" in raw_path:
        raise ValueError(f"path {raw_path!r} contains a NUL character")
    try:
        os.fsencode(raw_path)
    except UnicodeError:
        raise ValueError(f"path {raw_path!r} cannot be a file name on this system") from None
    labels = _parse_labels(row.get("label"))
    if not labels:
        raise ValueError("empty label")
    file_path = _resolve(raw_path, base)
    start_s, end_s = _parse_seconds(row.get("start"), "start"), _parse_seconds(row.get("end"), "end")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise ValueError(f"end={end_s} s is not after start={start_s} s")
    split = str(row.get("split") or "").strip() or split_for(raw_path, *fractions)
    if not SPLIT_NAME.match(split):
        raise ValueError(f"split {split!r} must be letters, digits, '_' or '-'")
    return Source("", file_path, labels, split, start_s, end_s, origin=where, weight=_parse_weight(row.get("weight")))


def _resolve(raw_path: str, base: Path | Location) -> str:
    """A manifest path as a path or URL: URLs and absolute paths as they are (file:// as a local
    path), relative ones against the manifest's folder."""
    if _is_url(raw_path):
        return Location.of(raw_path).url
    if os.path.isabs(raw_path):
        return str(Path(raw_path))
    if isinstance(base, Path):
        return str(base / raw_path)
    return str(base / posixpath.normpath(raw_path))


def _parse_labels(value) -> tuple[str, ...]:
    parts = value if isinstance(value, list) else str(value or "").split(";")
    return tuple(dict.fromkeys(str(part).strip() for part in parts if str(part).strip()))


def _parse_weight(value) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        weight = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"weight={value!r} is not a number") from None
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight={value!r} must be a finite number > 0")
    return weight


def _parse_seconds(value, name: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name}={value!r} is not a number of seconds")
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{name}={value!r} is not a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"{name}={value!r} must be >= 0 seconds")
    return seconds
