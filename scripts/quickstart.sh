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

echo "== 1/5 prepare: scikit-learn's handwritten digits -> FFCV"
labelopt prepare --dataset digits --out "$OUT/data" --overwrite

echo "== 2/5 train: a resnet20 teacher, $TEACHER_EPOCHS epochs, crop + flip views"
labelopt train --data "$OUT/data/digits" --arch resnet20 --epochs "$TEACHER_EPOCHS" --batch-size 64 --lr 0.05 \
  --out "$OUT/runs/teacher-resnet20" --overwrite

echo "== 3/5 evaluate on the test split"
labelopt evaluate "$OUT/runs/teacher-resnet20/best.pt" --data "$OUT/data/digits" --out "$OUT/eval/teacher-resnet20"

echo "== 4/5 generate-labels: the teacher's soft labels (T=4) for every training image (identity view; cifar-crop-flip stores all 162 views but takes ~6 min on 2 CPU cores)"
labelopt generate-labels --data "$OUT/data/digits" --teacher "$OUT/runs/teacher-resnet20/best.pt" --method sl \
  --views identity --temperature 4 --out "$OUT/labels/digits-sl-t4.h5" --overwrite

echo "== 5/5 labels inspect: provenance, shapes, size and quality of the stored labels"
labelopt labels inspect "$OUT/labels/digits-sl-t4.h5"

echo
echo "quick start done in $(( $(date +%s) - start )) s (after set-up)"
echo "  data:        $OUT/data/digits/{train,test}.beton, meta.json"
echo "  teacher run: $OUT/runs/teacher-resnet20/{config.json,metrics.jsonl,last.pt,best.pt}"
echo "  evaluation:  $OUT/eval/teacher-resnet20/{metrics.json,reliability.png}"
echo "  label store: $OUT/labels/digits-sl-t4.h5 (schema: docs/label-store.md)"
