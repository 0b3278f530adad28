"""Sources → shards + index, in two parallel passes.

1. probe: read each file's header (no decoding) for its length after resampling, rejecting
   unreadable, empty and truncated files early, and cutting (or skipping) files longer than
   `max_duration_s`, so no single file can exhaust a worker's memory;
2. plan: shuffle each split (seeded) and cut it into shards of a byte/sample target; PCM16 sizes
   are exact, so shards come out evenly sized;
3. write: each shard is one task that decodes, validates, resamples and writes its samples.

Every input ends up either as an index row or as a `Skipped` record with a reason. A remote input
its store did not serve within the time budget (`storage_timeout_s`) is no reason to skip: the
build fails naming every such input (`MissingInputs`), unless `allow_missing` records them as skips. Inputs and
the output may be local paths or URLs (`shards.location`). How the set commits (a local one
through a staging folder, a remote one by its dataset.json written last) is `shards.output`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from tqdm import tqdm

from shards.audio import (
    UNREACHABLE,
    AudioError,
    encode_pcm16,
    load_source,
    output_frames,
    pcm16_wav_bytes,
    probe,
    segment_frames,
)
from shards.dataset import DATASET_FILE, INDEX_FILE, describe_split, write_dataset_json, write_index
from shards.inputs import LABEL_CONFLICT, Skipped, Source, dedupe_keys, stable_fraction
from shards.location import Location
from shards.options import DEFAULT_MAX_DURATION_S, LONG_CLIP_POLICIES
from shards.output import OutputError, remove_stale, unmark
from shards.parallel import parallel_map
from shards.retry import DEFAULT_TIMEOUT_S, StorageFailure, set_storage_timeout
from shards.tar import ShardWriter
from shards.weights import class_balance_weights

PROBE_CHUNK = 256
SAMPLE_OVERHEAD_BYTES = 3 * 512 + 512  # two tar headers, json payload, padding (an estimate)
FAR_LONGER = 10  # clips this many times longer than the median are listed as outliers


@dataclass(frozen=True)
class BuildConfig:
    out: Location  # where shards are written (a path or URL is taken too): a staging folder, or a remote prefix
    sample_rate: int = 16000
    shard_bytes: int = 128 * 2**20
    shard_samples: int | None = None
    seed: int = 0
    backend: str = "ray"
    progress: bool = True
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S  # None: no limit
    long_clips: str = "segment"  # what happens to longer sources: LONG_CLIP_POLICIES
    storage_timeout_s: float = DEFAULT_TIMEOUT_S  # how long each storage call may wait for its store
    allow_missing: bool = False  # build without inputs the store did not serve (listed in dataset.json)

    def __post_init__(self):
        object.__setattr__(self, "out", Location.of(self.out))
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate {self.sample_rate} Hz is too low (>= 1000)")
        if self.shard_bytes < 4096:
            raise ValueError(f"shard size {self.shard_bytes} bytes is too small (>= 4096)")
        if self.shard_samples is not None and self.shard_samples < 1:
            raise ValueError(f"shard_samples {self.shard_samples} must be >= 1")
        if self.max_duration_s is not None and not self.max_duration_s >= 1.0:
            raise ValueError(f"max duration {self.max_duration_s} s must be >= 1 s")
        if self.long_clips not in LONG_CLIP_POLICIES:
            raise ValueError(f"long-clip policy {self.long_clips!r} is not one of {LONG_CLIP_POLICIES}")


class MissingInputs(StorageFailure):
    """Remote inputs that could not be read within the time budget; each one named."""


@dataclass
class BuildResult:
    rows: dict[str, list[dict]]
    labels: list[str]
    skipped: list[Skipped]
    clipped: list[str] = field(default_factory=list)
    files_in: int = 0
    silent: list[str] = field(default_factory=list)  # keys of digitally silent samples (all zeros)

    @property
    def samples_out(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    @property
    def hours(self) -> float:
        return sum(row["duration_s"] for rows in self.rows.values() for row in rows) / 3600

    @property
    def duplicates(self) -> list[Skipped]:
        return [s for s in self.skipped if s.reason == "duplicate"]

    @property
    def conflicts(self) -> list[Skipped]:
        return [s for s in self.skipped if s.reason == LABEL_CONFLICT]

    @property
    def far_longer(self) -> list[str]:
        """Keys of clips over FAR_LONGER x the median duration: outliers a person should look at."""
        rows = [row for split_rows in self.rows.values() for row in split_rows]
        median = float(np.median([row["duration_s"] for row in rows])) if rows else 0.0
        return sorted(row["key"] for row in rows if row["duration_s"] > FAR_LONGER * median)


def build_shards(sources: list[Source], listing_skips: list[Skipped], config: BuildConfig) -> BuildResult:
    """Probe, plan and write; then the per-split indexes. dataset.json is the caller's last step."""
    if not sources:
        raise ValueError(f"no valid input: {len(listing_skips)} input(s) were all skipped")
    probed, skipped = _probe(sources, config)
    check_reached(skipped, config)
    if not probed:
        raise ValueError(f"no valid input: all {len(sources)} file(s) failed to open; first: {skipped[0].detail}")
    plans = plan_shards(probed, config)
    rows, write_skips, clipped, silent = _write(plans, config)
    check_reached(write_skips, config)
    skipped = listing_skips + skipped + write_skips
    if not rows:
        raise ValueError(f"no valid input: every sample failed to decode; first: {skipped[0].detail}")
    labels = sorted({label for row in rows for label in row["labels"]})
    label_id = {label: i for i, label in enumerate(labels)}
    by_split: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["split"], r["shard"], r["offset"])):
        split = row.pop("split")
        row["label_ids"] = [label_id[label] for label in row["labels"]]
        by_split.setdefault(split, []).append(row)
    for split_rows in by_split.values():
        weights = class_balance_weights([row["labels"] for row in split_rows])
        for row, weight in zip(split_rows, weights):
            row["weight"] = weight if row["weight"] is None else row["weight"]
    try:
        for split, split_rows in by_split.items():
            write_index(config.out / split, split_rows)
    except OSError as exc:
        raise OutputError(f"cannot write the index in {config.out}: {exc.strerror or exc}") from None
    return BuildResult(
        by_split, labels, skipped, sorted(clipped), files_in=len(sources) + len(listing_skips), silent=sorted(silent)
    )


def check_reached(skipped: list[Skipped], config: BuildConfig) -> None:
    """Fail the build on inputs whose store did not answer (unless `allow_missing`), naming each."""
    unreached = [s for s in skipped if s.reason == UNREACHABLE]
    if unreached and not config.allow_missing:
        raise MissingInputs(
            f"{len(unreached)} input(s) could not be read within the --storage-timeout budget "
            f"({config.storage_timeout_s:g} s); run again when the store answers, or pass --allow-missing "
            "to build without them (they are then listed in dataset.json):\n"
            + "\n".join(f"  {s.path}: {s.detail}" for s in unreached)
        )


def plan_shards(probed: list[tuple[Source, int]], config: BuildConfig) -> list[dict]:
    """Shuffle each split (seeded) and cut it into shards by estimated bytes and sample count."""
    plans: list[dict] = []
    for split in sorted({source.split for source, _ in probed}):
        members = sorted(
            ((s, n) for s, n in probed if s.split == split),
            key=lambda item: (stable_fraction(item[0].key, salt=f"{config.seed}:"), item[0].key),
        )
        shards: list[list[dict]] = [[]]
        shard_bytes = 0
        for source, num_samples in members:
            size = pcm16_wav_bytes(num_samples) + SAMPLE_OVERHEAD_BYTES
            full = shard_bytes + size > config.shard_bytes or len(shards[-1]) == config.shard_samples
            if shards[-1] and full:
                shards.append([])
                shard_bytes = 0
            shards[-1].append(asdict(source))
            shard_bytes += size
        plans += [_plan(config, split, number, sources) for number, sources in enumerate(shards)]
    return plans


def _plan(config: BuildConfig, split: str, number: int, sources: list[dict]) -> dict:
    return {
        "split": split,
        "path": str(config.out / split / f"shard-{number:06d}.tar"),
        "sample_rate": config.sample_rate,
        "storage_timeout_s": config.storage_timeout_s,
        "sources": sources,
    }


def _probe(sources: list[Source], config: BuildConfig) -> tuple[list[tuple[Source, int]], list[Skipped]]:
    chunks = [
        {
            "sample_rate": config.sample_rate,
            "max_duration_s": config.max_duration_s,
            "long_clips": config.long_clips,
            "storage_timeout_s": config.storage_timeout_s,
            "sources": [asdict(s) for s in sources[i : i + PROBE_CHUNK]],
        }
        for i in range(0, len(sources), PROBE_CHUNK)
    ]
    probed, skipped = [], []
    with tqdm(total=len(sources), unit="file", desc="probe", disable=not config.progress) as bar:
        for result in parallel_map(probe_chunk, chunks, config.backend):
            probed += [(_source(s), n) for s, n in result["ok"]]
            skipped += [Skipped(**s) for s in result["skipped"]]
            bar.update(len(result["ok"]) + len(result["skipped"]))
    unique = dedupe_keys([source for source, _ in probed])  # segment keys may meet a listed key
    return [(source, n) for source, (_, n) in zip(unique, probed)], skipped


def _write(plans: list[dict], config: BuildConfig) -> tuple[list[dict], list[Skipped], list[str], list[str]]:
    try:
        unmark(config.out)
        for split in {plan["split"] for plan in plans}:
            (config.out / split).mkdir()
    except OSError as exc:
        raise OutputError(f"cannot write to {config.out}: {exc.strerror or exc}") from None
    rows, skipped, clipped, silent = [], [], [], []
    with tqdm(total=len(plans), unit="shard", desc="write", disable=not config.progress) as bar:
        for result in parallel_map(write_shard, plans, config.backend):
            if result.get("output_error"):
                raise OutputError(result["output_error"])
            rows += result["rows"]
            skipped += [Skipped(**s) for s in result["skipped"]]
            clipped += result["clipped"]
            silent += result["silent"]
            bar.update(1)
            bar.set_postfix(hours=f"{sum(r['duration_s'] for r in rows) / 3600:.2f}")
    return rows, skipped, clipped, silent


def probe_chunk(item: dict) -> dict:
    """Worker: header-only length (after resampling) of each source, or why it is skipped;
    sources over `max_duration_s` come back as equal segments, or skipped (`long_clips`)."""
    set_storage_timeout(item["storage_timeout_s"])
    ok, skipped = [], []
    for raw in item["sources"]:
        source = _source(raw)
        try:
            frames, rate = probe(source.path)
            first, last = segment_frames(frames, rate, source.start_s, source.end_s, source.path)
            limit = item["max_duration_s"]
            if limit is None or last - first <= limit * rate:
                ok.append((raw, output_frames(last - first, rate, item["sample_rate"])))
            elif item["long_clips"] == "skip":
                raise AudioError(
                    "too long", f"{source.path}: {(last - first) / rate:.1f} s is over --max-duration {limit:g} s"
                )
            else:
                ok += [
                    (asdict(part), output_frames(n, rate, item["sample_rate"]))
                    for part, n in _segments(source, first, last, rate, limit)
                ]
        except AudioError as exc:
            skipped.append(asdict(_skip(source, exc)))
    return {"ok": ok, "skipped": skipped}


def _segments(source: Source, first: int, last: int, rate: int, limit_s: float) -> list[tuple[Source, int]]:
    """A long source cut into the fewest equal segments of at most `limit_s`, each its own sample
    (key suffixed with its bounds in ms), with its length in source frames."""
    count = math.ceil((last - first) / (limit_s * rate))
    bounds = [first + (last - first) * i // count for i in range(count + 1)]
    parts = []
    for start, end in zip(bounds, bounds[1:]):
        key = f"{source.key}__{1000 * start // rate}-{1000 * end // rate}ms"
        parts.append((replace(source, key=key, start_s=start / rate, end_s=end / rate), end - start))
    return parts


def _skip(source: Source, exc: AudioError) -> Skipped:
    """A skip that names the manifest line too, when the source came from one."""
    return Skipped(source.path, exc.reason, f"{source.origin}: {exc.detail}" if source.origin else exc.detail)


def write_shard(plan: dict) -> dict:
    """Worker: decode, validate and resample each source, write one shard; index rows back.
    A write that fails (full or read-only disk) comes back as `output_error`, whatever the backend."""
    set_storage_timeout(plan["storage_timeout_s"])
    path = Location.of(plan["path"])
    try:
        writer = ShardWriter(path)
    except OSError as exc:
        return {"output_error": f"cannot write {path}: {exc.strerror or exc}"}
    try:
        return _fill_shard(writer, plan)
    except OSError as exc:
        writer.abort()
        return {"output_error": f"cannot write {path}: {exc.strerror or exc}"}
    except BaseException:
        writer.abort()
        raise


def _fill_shard(writer: ShardWriter, plan: dict) -> dict:
    rows, skipped, clipped, silent = [], [], [], []
    for raw in plan["sources"]:
        source = _source(raw)
        try:
            waveform, clips = load_source(source.path, plan["sample_rate"], source.start_s, source.end_s)
        except AudioError as exc:
            skipped.append(asdict(_skip(source, exc)))
            continue
        meta = {
            "key": source.key,
            "labels": list(source.labels),
            "num_samples": len(waveform),
            "sample_rate": plan["sample_rate"],
            "source": source.path,
            "start_s": source.start_s,
            "end_s": source.end_s,
        }
        member = writer.add(source.key, encode_pcm16(waveform, plan["sample_rate"]), meta)
        if clips:
            clipped.append(source.key)
        if not np.any(waveform):
            silent.append(source.key)
        rows.append(
            {
                **meta,
                "split": plan["split"],
                "shard": writer.name,
                "offset": member.offset,
                "nbytes": member.nbytes,
                "xxh3_64": member.xxh3_64,
                "duration_s": len(waveform) / plan["sample_rate"],
                "weight": source.weight,
            }
        )
    if rows:
        writer.close()
    else:
        writer.abort()
    return {"rows": rows, "skipped": skipped, "clipped": clipped, "silent": silent}


def _source(raw: dict) -> Source:
    return Source(**{**raw, "labels": tuple(raw["labels"])})


def write_metadata(result: BuildResult, config: BuildConfig, parameters: dict, fbank: dict | None) -> dict:
    """dataset.json: vocabulary, counts, stats, parameters and every skipped input, written last."""
    meta = {
        "sample_rate": config.sample_rate,
        "audio_format": "wav/pcm16/mono",
        "labels": result.labels,
        "multi_label": any(len(row["labels"]) > 1 for rows in result.rows.values() for row in rows),
        "splits": {split: describe_split(rows) for split, rows in sorted(result.rows.items())},
        "total_duration_s": round(result.hours * 3600, 3),
        "fbank": fbank,
        "parameters": parameters,
        "files_in": result.files_in,
        "clipped": result.clipped,
        "silent": result.silent,
        "far_longer": result.far_longer,
        "skipped": [asdict(s) for s in result.skipped],
    }
    keep = {
        f"{split}/{name}" for split, rows in result.rows.items() for name in (INDEX_FILE, *{r["shard"] for r in rows})
    }
    try:
        remove_stale(config.out, keep)
        write_dataset_json(config.out, meta)
    except OSError as exc:
        raise OutputError(f"cannot write {config.out / DATASET_FILE}: {exc.strerror or exc}") from None
    return meta


def summary(result: BuildResult) -> str:
    """What a person wants after a long run: in, out, skipped by reason, hours, shards."""
    reasons = Counter(s.reason for s in result.skipped)
    shards = sum(len({r["shard"] for r in rows}) for rows in result.rows.values())
    lines = [
        f"files in: {result.files_in}   samples out: {result.samples_out}   "
        f"audio: {result.hours:.2f} h   shards: {shards} ({', '.join(f'{k}: {len(v)}' for k, v in sorted(result.rows.items()))} samples)",
        f"skipped: {len(result.skipped)}" + "".join(f"\n  {n:6d}  {reason}" for reason, n in reasons.most_common()),
    ]
    if result.clipped:
        lines.append(f"clipped to +-1.0 when stored as PCM16: {len(result.clipped)} sample(s)")
    if result.duplicates:
        lines.append(f"duplicates kept once: {len(result.duplicates)} row(s) (--keep-duplicates keeps them)")
    if result.conflicts:
        lines.append(
            f"label conflicts: {len(result.conflicts)} row(s) label a file already listed with other labels "
            "(the first row kept; each listed above and in dataset.json)"
        )
    return "\n".join(lines)


def warnings(result: BuildResult, shown: int) -> list[str]:
    """Outliers worth a look, listed by key: digitally silent clips and clips far longer than the rest."""
    lines = []
    for keys, what in (
        (result.silent, "digitally silent (all samples zero; left out of the fbank statistics)"),
        (result.far_longer, f"over {FAR_LONGER}x the median duration"),
    ):
        if keys:
            more = f" ... and {len(keys) - shown} more (all in dataset.json)" if len(keys) > shown else ""
            lines.append(f"warning: {len(keys)} clip(s) {what}: {', '.join(keys[:shown])}{more}")
    return lines
