"""Foreign weights -> an elasticast checkpoint, for `Classifier`, `elasticast-evaluate --checkpoint`
and `elasticast-train --init`.

    elasticast-import-weights voxceleb.pth vox.pt --dataset voxceleb          # a released paper model
    elasticast-import-weights as.pth as.pt --dataset audioset --labels class_labels_indices.csv
    elasticast-import-weights mine.pth mine.pt --format paper --mean -5.1 --std 4.2 --heads 4
    elasticast-import-weights vit_b16.pth init.pt --labels classes.csv --mean -5.1 --std 4.2

    elasticast-import-weights audioset_10_10_0.4593.pth ast.pt --mean -4.2677 --std 4.5690 --multi-label

(or `python jobs/import_weights.py ...`). The format (paper, ast, ast-hf, ssast, vit) is read
from the keys unless --format says it. AST files become the AST baseline (their strides, [cls]
and distillation tokens averaged); the others ElasticAST. The feature recipe is the reference
codes' (padding before normalising, long clips cropped) except for a ViT. `--dataset` sets the paper's settings for that model: feature recipe and
statistics, classes, label type, time-table size; flags set them for any other file. Prints what
was loaded, converted, left out and newly initialised. See docs/pretrained.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

FORMATS = ("paper", "ast", "ast-hf", "ssast", "vit")  # elasticast.foreign.FORMATS, without importing torch for --help
HEADLESS = ("ssast", "vit")  # formats whose files hold no classifier for audio
DATASETS = ("voxceleb", "epic_sounds", "audioset", "vggsound")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="the foreign weights file (.pth, .pt, .safetensors)")
    parser.add_argument("output", metavar="OUT", help="the elasticast checkpoint to write (a path or URL)")
    parser.add_argument("--format", choices=FORMATS, help="the file's layout (default: read from its keys)")
    parser.add_argument("--dataset", choices=DATASETS, help="a released paper model: its settings from the paper")
    parser.add_argument("--mean", type=float, help="fbank mean the weights were trained with")
    parser.add_argument("--std", type=float, help="fbank std the weights were trained with")
    parser.add_argument(
        "--labels", help="class names: the paper's class_labels_indices.csv layout (index,mid,display_name)"
    )
    parser.add_argument("--multi-label", action="store_true", help="sigmoid outputs (BCE), as AudioSet's")
    parser.add_argument(
        "--max-frames", type=int, help="input frames the time table covers (paper files: its rows x 16)"
    )
    parser.add_argument("--fixed-frames", type=int, help="the paper's fixed-length mode: int(N / C) frames per clip")
    parser.add_argument("--heads", type=int, help="attention heads (not in the weights; default: head dim 64)")
    parser.add_argument(
        "--recipe", choices=("paper", "elasticast"), help="feature recipe (default: paper for paper files, else ours)"
    )
    return parser.parse_args(argv)


def read_labels(path: str) -> list[str]:
    """display_name by index from a class_labels_indices.csv (index,mid,display_name); a file
    without those columns: the first column of each row."""
    lines = Path(path).read_text().splitlines()
    rows = list(csv.DictReader(lines))
    if rows and {"index", "display_name"} <= set(rows[0]):
        return [row["display_name"] for row in sorted(rows, key=lambda row: int(row["index"]))]
    return [row[0] for row in csv.reader(lines) if row]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from elasticast.ast_baseline import ASTBaseline
    from elasticast.checkpoint import save_checkpoint
    from elasticast.foreign import PAPER_DATASETS, SAMPLE_RATE, import_model, read_weights
    from loaders.feature_spec import FeatureSpec

    try:
        format, state = read_weights(args.input, args.format)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"read {args.input}: {format} weights, {len(state)} tensors")
    labels = read_labels(args.labels) if args.labels else None
    preset = PAPER_DATASETS[args.dataset] if args.dataset else None
    if preset is not None:
        features = preset.features()
    elif args.mean is None or args.std is None:
        print("error: pass --dataset, or --mean and --std (the fbank statistics it was trained with)", file=sys.stderr)
        return 2
    else:
        features = FeatureSpec(
            SAMPLE_RATE,
            args.mean,
            args.std,
            multi_label=args.multi_label,
            recipe=args.recipe or ("elasticast" if format == "vit" else "paper"),
            fixed_frames=args.fixed_frames,
        )
    try:  # a file with a classifier keeps its own classes: --labels must name as many
        classes = len(labels) if labels and format in HEADLESS else None
        model, report = import_model(format, state, classes=classes, heads=args.heads, frames=args.max_frames)
    except (KeyError, ValueError, RuntimeError) as error:  # RuntimeError: a shape the model has not
        print(f"error: {args.input}: {error}", file=sys.stderr)
        return 2
    classes = model.config.num_classes
    kind = "the AST baseline" if isinstance(model, ASTBaseline) else "ElasticAST"
    if preset is not None and preset.classes != classes:
        print(
            f"error: {args.input} has {classes} classes, {args.dataset}'s model has {preset.classes}", file=sys.stderr
        )
        return 2
    if labels is not None and len(labels) != classes:
        print(f"error: {args.labels} names {len(labels)} classes, the weights have {classes}", file=sys.stderr)
        return 2
    if labels is None:
        labels = [str(i) for i in range(classes)]
        print(f"note: no --labels: classes are named by index 0..{classes - 1}")
    features = replace(features, max_frames=model.config.max_frames)
    print(f"model: {kind} {model.config}")
    print(f"features: {features}")
    for line in report.lines():
        print(line)
    save_checkpoint(
        args.output,
        model,
        labels,
        features,
        extra={"imported": {"file": str(Path(args.input).name), "format": format, "dataset": args.dataset}},
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
