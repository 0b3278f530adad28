"""A variable-length speaker-identification set from FSDD: each clip is 1 to 20 recordings of
one speaker, concatenated, so clips run from ~0.2 s to ~10 s. The label is the speaker.

    python examples/fsdd_speakers/build.py RECORDINGS_DIR OUT_DIR [--train-clips 600 --valid-clips 120 --test-clips 240]

Split by take, extending FSDD's own split: test clips use takes 0-4 only, valid clips (on which
training chooses best.pt) takes 5-9, train clips takes 10-49, so no recording is in two splits.
Within a split a recording may appear in several clips (never twice in one). The number of
recordings per clip is log-uniform in 1..20 (short clips are common, long ones rare, as in
VoxCeleb or Epic-Sounds), stopping early at 10 s. Writes OUT/audio/*.wav
(8 kHz, as the sources) and OUT/manifest.csv for jobs/make_shards.py. Same seed, same set.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile

from shards.inputs import write_manifest

MAX_TAKES = 20
MAX_SECONDS = 10.0
TEST_TAKES = range(5)
VALID_TAKES = range(5, 10)


def split_of_take(take: int) -> str:
    return "test" if take in TEST_TAKES else "valid" if take in VALID_TAKES else "train"


def recordings_by_speaker(recordings: Path) -> dict[tuple[str, str], list[Path]]:
    """{(split, speaker): files}, split by take number."""
    pools: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for file in sorted(Path(recordings).glob("*.wav")):
        _digit, speaker, take = file.stem.split("_")
        pools[split_of_take(int(take)), speaker].append(file)
    if not pools:
        raise FileNotFoundError(f"no FSDD recordings (DIGIT_SPEAKER_TAKE.wav) in {recordings}")
    return pools


def build(
    recordings: Path, out: Path, train_clips: int = 600, test_clips: int = 240, seed: int = 0, valid_clips: int = 120
) -> Path:
    """Write the clips and the manifest; returns the manifest path."""
    pools = recordings_by_speaker(recordings)
    speakers = sorted({speaker for _, speaker in pools})
    rng = np.random.default_rng(seed)
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in (("train", train_clips), ("test", test_clips), ("valid", valid_clips)):
        for n in range(count):
            speaker = speakers[n % len(speakers)]
            pool = pools[split, speaker]
            takes = min(int(np.exp(rng.uniform(0, np.log(MAX_TAKES + 1)))), MAX_TAKES, len(pool))
            pieces, rate = [], None
            for file in rng.choice(pool, size=takes, replace=False):
                wave, rate = soundfile.read(file, dtype="int16")
                if pieces and (sum(map(len, pieces)) + len(wave)) / rate > MAX_SECONDS:
                    break
                pieces.append(wave)
            path = audio / f"{split}_{speaker}_{n:04d}.wav"
            soundfile.write(path, np.concatenate(pieces), rate, subtype="PCM_16")
            rows.append({"path": str(path.resolve()), "label": speaker, "split": split})
    return write_manifest(out / "manifest.csv", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recordings", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-clips", type=int, default=600)
    parser.add_argument("--test-clips", type=int, default=240)
    parser.add_argument("--valid-clips", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {build(args.recordings, args.out, args.train_clips, args.test_clips, args.seed, args.valid_clips)}")
