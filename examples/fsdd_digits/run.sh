#!/usr/bin/env bash
# FSDD digits end to end: manifest -> shards -> training. Usage (from the repository root):
#   bash examples/fsdd_digits/run.sh [RECORDINGS_DIR] [OUT_DIR] [extra jobs/train.py flags]
set -euo pipefail
FSDD=${1:-../shared/data/fsdd/recordings}
OUT=${2:-runs/fsdd_digits}
PY=${PY:-.venv/bin/python}
shift $(( $# < 2 ? $# : 2 ))
$PY examples/fsdd_digits/manifest.py "$FSDD" "$OUT/manifest.csv"
$PY jobs/make_shards.py --manifest "$OUT/manifest.csv" --out "$OUT/shards" --overwrite --quiet
$PY jobs/train.py --config examples/fsdd_digits/config.yaml --shards "$OUT/shards" --out "$OUT/run" "$@"
