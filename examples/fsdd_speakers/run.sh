#!/usr/bin/env bash
# The paper's four claims on real recordings: FSDD speaker identification with clips of 0.2-10 s.
#   bash examples/fsdd_speakers/run.sh [RECORDINGS_DIR] [OUT_DIR]        (from the repository root)
# Builds the set (TRAIN_CLIPS / VALID_CLIPS / TEST_CLIPS, default 600 / 120 / 240), shards it, trains five
# tiny models (EPOCHS each, default 12; best.pt chosen on valid) and evaluates them all on test:
#   elasticast        native length, C = 1          ast-128 / ast-256  fixed 128 / 256 frames, C = 1
#   elasticast-mixed  native length, C in 1.0..4.0  ast-c2             fixed 128 frames at C = 2
# A finished model (metrics.json present) is not retrained, so an interrupted run continues.
set -euo pipefail
FSDD=${1:-../shared/data/fsdd/recordings}
OUT=${2:-runs/fsdd_speakers}
EPOCHS=${EPOCHS:-12}
TRAIN_CLIPS=${TRAIN_CLIPS:-600}
TEST_CLIPS=${TEST_CLIPS:-240}
VALID_CLIPS=${VALID_CLIPS:-120}
PY=${PY:-.venv/bin/python}
HERE=examples/fsdd_speakers
MIXED="1.0 1.2 1.4 1.6 1.8 2.0 2.2 2.4 2.6 2.8 3.0 3.2 3.4 3.6 3.8 4.0"

[ -f "$OUT/shards/dataset.json" ] || {
  $PY $HERE/build.py "$FSDD" "$OUT/data" --train-clips "$TRAIN_CLIPS" --test-clips "$TEST_CLIPS" --valid-clips "$VALID_CLIPS"
  $PY jobs/make_shards.py --manifest "$OUT/data/manifest.csv" --out "$OUT/shards" --overwrite --quiet --backend local
}
train() {
  local name=$1; shift
  [ -f "$OUT/runs/$name/metrics.json" ] && return
  rm -rf "$OUT/runs/$name"
  $PY jobs/train.py --config $HERE/config.yaml --shards "$OUT/shards" --out "$OUT/runs/$name" --epochs "$EPOCHS" "$@"
}
train elasticast
train ast-128 --model ast --target-frames 128
train ast-256 --model ast --target-frames 256
train elasticast-mixed --scales $MIXED
train ast-c2 --model ast --target-frames 128 --scales 2.0
$PY jobs/evaluate.py --shards "$OUT/shards/test" --out "$OUT/eval" \
  --checkpoint "$OUT"/runs/{elasticast,ast-128,ast-256,elasticast-mixed,ast-c2} \
  --lengths 32 64 128 256 512 1008 --scales 1.0 1.5 2.0 2.5 3.0 3.5 4.0
