"""Sources → shards + index, in two parallel passes.

1. probe: read each file's header (no decoding) for its length after resampling, rejecting
   unreadable, empty and truncated files early;
2. plan: shuffle each split (seeded) and cut it into shards of a byte/sample target; PCM16 sizes
   are exact, so shards come out evenly sized;
3. write: each shard is one task that decodes, validates, resamples and writes its samples.

Every input ends up either as an index row or as a `Skipped` record with a reason.
"""
from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from shards.audio import (
    AudioError,
    encode_pcm16,
    load_source,
    output_frames,
    pcm16_wav_bytes,
    probe,
    segment_frames,
)
from shards.dataset import DATASET_FILE, describe_split, write_dataset_json, write_index
from shards.inputs import Skipped, Source, stable_fraction
from shards.parallel import parallel_map
from shards.tar import ShardWriter

PROBE_CHUNK = 256
SAMPLE_OVERHEAD_BYTES = 3 * 512 + 512  # two tar headers, json payload, padding (an estimate)


@dataclass(frozen=True)
class BuildConfig:
    out: Path
    sample_rate: int = 16000
    shard_bytes: int = 128 * 2**20
    shard_samples: int | None = None
    seed: int = 0
    backend: str = "ray"
    progress: bool = True

    def __post_init__(self):
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate {self.sample_rate} Hz is too low (>= 1000)")
        if self.shard_bytes < 4096:
            raise ValueError(f"shard size {self.shard_bytes} bytes is too small (>= 4096)")
        if self.shard_samples is not None and self.shard_samples < 1:
            raise ValueError(f"shard_samples {self.shard_samples} must be >= 1")


@dataclass
class BuildResult:
    rows: dict[str, list[dict]]
    labels: list[str]
    skipped: list[Skipped]
    clipped: list[str] = field(default_factory=list)
    files_in: int = 0

    @property
    def samples_out(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    @property
    def hours(self) -> float:
        return sum(row["duration_s"] for rows in self.rows.values() for row in rows) / 3600


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to mix with an existing folder; with `overwrite`, replace only a former shard set."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} exists and is not empty (use --overwrite to replace it)")
        if not (out / DATASET_FILE).is_file() and not any(out.glob("*/.shard-*.partial")):
            raise FileExistsError(f"refusing to --overwrite {out}: it does not look like a shard set (no {DATASET_FILE})")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build_shards(sources: list[Source], listing_skips: list[Skipped], config: BuildConfig) -> BuildResult:
    """Probe, plan and write; then the per-split indexes. dataset.json is the caller's last step."""
    if not sources:
        raise ValueError(f"no valid input: {len(listing_skips)} input(s) were all skipped")
    probed, skipped = _probe(sources, config)
    if not probed:
        raise ValueError(f"no valid input: all {len(sources)} file(s) failed to open; first: {skipped[0].detail}")
    plans = plan_shards(probed, config)
    rows, write_skips, clipped = _write(plans, config)
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
    for split, split_rows in by_split.items():
        write_index(config.out / split, split_rows)
    return BuildResult(by_split, labels, skipped, sorted(clipped), files_in=len(sources) + len(listing_skips))


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
        "sources": sources,
    }


def _probe(sources: list[Source], config: BuildConfig) -> tuple[list[tuple[Source, int]], list[Skipped]]:
    chunks = [
        {"sample_rate": config.sample_rate, "sources": [asdict(s) for s in sources[i : i + PROBE_CHUNK]]}
        for i in range(0, len(sources), PROBE_CHUNK)
    ]
    probed, skipped = [], []
    with tqdm(total=len(sources), unit="file", desc="probe", disable=not config.progress) as bar:
        for result in parallel_map(probe_chunk, chunks, config.backend):
            probed += [(_source(s), n) for s, n in result["ok"]]
            skipped += [Skipped(**s) for s in result["skipped"]]
            bar.update(len(result["ok"]) + len(result["skipped"]))
    return probed, skipped


def _write(plans: list[dict], config: BuildConfig) -> tuple[list[dict], list[Skipped], list[str]]:
    for split in {plan["split"] for plan in plans}:
        (config.out / split).mkdir(parents=True, exist_ok=True)
    rows, skipped, clipped = [], [], []
    with tqdm(total=len(plans), unit="shard", desc="write", disable=not config.progress) as bar:
        for result in parallel_map(write_shard, plans, config.backend):
            rows += result["rows"]
            skipped += [Skipped(**s) for s in result["skipped"]]
            clipped += result["clipped"]
            bar.update(1)
            bar.set_postfix(hours=f"{sum(r['duration_s'] for r in rows) / 3600:.2f}")
    return rows, skipped, clipped


def probe_chunk(item: dict) -> dict:
    """Worker: header-only length (after resampling) of each source, or why it is skipped."""
    ok, skipped = [], []
    for raw in item["sources"]:
        source = _source(raw)
        try:
            frames, rate = probe(source.path)
            first, last = segment_frames(frames, rate, source.start_s, source.end_s, source.path)
            ok.append((raw, output_frames(last - first, rate, item["sample_rate"])))
        except AudioError as exc:
            skipped.append(asdict(Skipped(source.path, exc.reason, exc.detail)))
    return {"ok": ok, "skipped": skipped}


def write_shard(plan: dict) -> dict:
    """Worker: decode, validate and resample each source, write one shard; index rows back."""
    rows, skipped, clipped = [], [], []
    path = Path(plan["path"])
    writer = ShardWriter(path)
    try:
        for raw in plan["sources"]:
            source = _source(raw)
            try:
                waveform, clips = load_source(source.path, plan["sample_rate"], source.start_s, source.end_s)
            except AudioError as exc:
                skipped.append(asdict(Skipped(source.path, exc.reason, exc.detail)))
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
            rows.append(
                {
                    **meta,
                    "split": plan["split"],
                    "shard": path.name,
                    "offset": member.offset,
                    "nbytes": member.nbytes,
                    "duration_s": len(waveform) / plan["sample_rate"],
                }
            )
    except BaseException:
        writer.abort()
        raise
    if rows:
        writer.close()
    else:
        writer.abort()
    return {"rows": rows, "skipped": skipped, "clipped": clipped}


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
        "skipped": [asdict(s) for s in result.skipped],
    }
    write_dataset_json(config.out, meta)
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
    return "\n".join(lines)
