#!/usr/bin/env bash
# The quick start: set up, then run labelopt end to end on the embedded digits dataset.
# Everything lands in ./quickstart/ (data, run folder, evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

OUT=${QUICKSTART_OUT:-quickstart}
TEACHER_EPOCHS=${QUICKSTART_TEACHER_EPOCHS:-15}
start=$(date +%s)

echo "== 1/3 prepare: scikit-learn's handwritten digits -> FFCV"
labelopt prepare --dataset digits --out "$OUT/data" --overwrite

echo "== 2/3 train: a resnet20 teacher, $TEACHER_EPOCHS epochs, crop + flip views"
labelopt train --data "$OUT/data/digits" --arch resnet20 --epochs "$TEACHER_EPOCHS" --batch-size 64 --lr 0.05 \
  --out "$OUT/runs/teacher-resnet20" --overwrite

echo "== 3/3 evaluate on the test split"
labelopt evaluate "$OUT/runs/teacher-resnet20/best.pt" --data "$OUT/data/digits" --out "$OUT/eval/teacher-resnet20"

echo
echo "quick start done in $(( $(date +%s) - start )) s (after set-up)"
echo "  data:        $OUT/data/digits/{train,test}.beton, meta.json"
echo "  teacher run: $OUT/runs/teacher-resnet20/{config.json,metrics.jsonl,last.pt,best.pt}"
echo "  evaluation:  $OUT/eval/teacher-resnet20/{metrics.json,reliability.png}"
