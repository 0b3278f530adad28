"""FSDD manifest with the dataset's conventional split: takes 0-4 of every speaker and digit are
the test set, takes 5-49 train; the label is the spoken digit.

    python examples/fsdd_digits/manifest.py RECORDINGS_DIR OUT.csv [--every N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shards.inputs import write_manifest


def digit_manifest(recordings: Path, path: Path, every: int = 1) -> Path:
    """`every`: keep every n-th recording by name (a smaller set with all digits and speakers)."""
    files = sorted(Path(recordings).glob("*.wav"))[::every]
    if not files:
        raise FileNotFoundError(f"no .wav recordings in {recordings}")
    rows = []
    for file in files:
        digit, _speaker, take = file.stem.split("_")
        rows.append({"path": str(file.resolve()), "label": digit, "split": "test" if int(take) < 5 else "train"})
    return write_manifest(path, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recordings", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    print(f"wrote {digit_manifest(args.recordings, args.out, args.every)}")
