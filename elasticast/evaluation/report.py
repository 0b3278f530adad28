"""Evaluation outputs: `results.csv` (one row per checkpoint and point), `usage.csv`,
`results.md` (tables) and the plots `length.png` (metric vs maximum length, the paper's
Figure 4) and `scale.png` (metric vs resolution C, its Figure 5). `out` is a local folder or a
URL (`shards.location`): each file is rendered in memory, then written whole."""

from __future__ import annotations

import csv
import io
import os

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from shards.location import Location  # noqa: E402

NATIVE = "native"


def write_report(out: str | os.PathLike | Location, results: list[dict], usage: list[dict]) -> list[Location]:
    """All output files under `out`; returns their locations."""
    out = Location.of(out)
    out.mkdir()
    written = [_write_csv(out / "results.csv", results), _write_csv(out / "usage.csv", usage)]
    sections = ["# Evaluation", ""]
    for sweep, axis in (("length", "point"), ("scale", "point")):
        rows = [r for r in results if r["sweep"] == sweep]
        if rows:
            sections += [f"## {results_title(sweep, rows)}", "", *_pivot(rows, axis), ""]
            written.append(_plot(out / f"{sweep}.png", sweep, rows))
    if usage:
        sections += [
            "## Training-token usage (epoch 0 plan)",
            "",
            "| checkpoint | model | setting | scales | pad % | cut % |",
            "|---|---|---|---|---|---|",
        ]
        sections += [
            f"| {u['checkpoint']} | {u['model']} | {u['setting']} | {u['scales']} | {u['pad_ratio']:.1%} | {u['cut_ratio']:.1%} |"
            for u in usage
        ]
    (out / "results.md").write_text("\n".join(sections) + "\n")
    return [*written, out / "results.md"]


def results_title(sweep: str, rows: list[dict]) -> str:
    name = rows[0]["metric_name"]
    return f"{name} vs maximum length (frames)" if sweep == "length" else f"{name} vs resolution C"


def _write_csv(location: Location, rows: list[dict]) -> Location:
    text = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    location.write_text(text.getvalue())
    return location


def _pivot(rows: list[dict], axis: str) -> list[str]:
    """A Markdown table: one line per checkpoint, one column per point."""
    points = list(dict.fromkeys(r[axis] for r in rows))
    names = list(dict.fromkeys(r["checkpoint"] for r in rows))
    value = {(r["checkpoint"], r[axis]): r["metric"] for r in rows}
    lines = ["| checkpoint | " + " | ".join(points) + " |", "|---" * (len(points) + 1) + "|"]
    for name in names:
        cells = [f"{value[(name, p)]:.3f}" if (name, p) in value else "" for p in points]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plot(location: Location, sweep: str, rows: list[dict]) -> Location:
    """One line per checkpoint (and compression); in the length plot each checkpoint's
    `native` result is a marker at the mean frames it used, as the paper's scattered dots."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["checkpoint"] for r in rows):
        own = [r for r in rows if r["checkpoint"] == name]
        if sweep == "length":
            line = [r for r in own if r["point"] != NATIVE]
            drawn = axes.plot([r["max_frames"] for r in line], [r["metric"] for r in line], marker=".", label=name)
            for r in own:
                if r["point"] == NATIVE:
                    x = r["input_frames"] or r["tokens_per_clip"] * 2  # 8 tokens per 16 frames
                    axes.scatter([x], [r["metric"]], s=80, marker="*", color=drawn[0].get_color(), zorder=3)
        else:
            color = None  # the avgpool line takes its checkpoint's colour, dashed
            for compression, style in (("shift", "-"), ("avgpool", "--")):
                line = [r for r in own if r["compression"] == compression]
                if line:
                    drawn = axes.plot(
                        [r["scale"] for r in line],
                        [r["metric"] for r in line],
                        style,
                        marker=".",
                        color=color,
                        label=name if compression == "shift" else f"{name} (avgpool)",
                    )
                    color = drawn[0].get_color()
    if sweep == "length":
        axes.set_xscale("log", base=2)
    axes.set_xlabel("maximum length (frames)" if sweep == "length" else "resolution C (frame shift 10*C ms)")
    axes.set_ylabel(rows[0]["metric_name"])
    axes.set_ylim(0, 1.02)  # the whole range of accuracy and mAP: noise between runs does not look like a trend
    axes.set_title(
        results_title(sweep, rows) + (" (stars: native / trained length)" if sweep == "length" else ""), fontsize=10
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    plt.close(figure)
    location.write_bytes(image.getvalue())
    return location
