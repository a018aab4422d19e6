#!/usr/bin/env bash
# The quick start: set up, then run labelopt's whole pipeline on the embedded digits dataset.
# Everything lands in ./quickstart/ (data, runs, label store, evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

OUT=${QUICKSTART_OUT:-quickstart}
EPOCHS=${QUICKSTART_EPOCHS:-15}
DATA="$OUT/data/digits"
start=$(date +%s)

echo "== 1/7 prepare: scikit-learn's handwritten digits -> FFCV"
labelopt prepare --dataset digits --out "$OUT/data" --overwrite

echo "== 2/7 train: a resnet20 teacher, $EPOCHS epochs, crop + flip views, 10 % of each class held out"
# --val-fraction 0.1: its best.pt is the epoch of highest top-1 on images held out of training (never the test
# split, which step 7 reports on).
labelopt train --data "$DATA" --arch resnet20 --epochs "$EPOCHS" --val-fraction 0.1 \
  --out "$OUT/runs/teacher-resnet20" --overwrite

echo "== 3/7 generate-labels (stage one): the best teacher's soft labels at T=4 for every training image"
# identity: one view per image, paired with freshly augmented images in stage two. --views cifar-crop-flip stores
# all 162 views (stage two then equals online distillation exactly) but takes ~6 min on 2 CPU cores.
labelopt generate-labels --data "$DATA" --teacher "$OUT/runs/teacher-resnet20/best.pt" --method sl \
  --views identity --temperature 4 --out "$OUT/labels/digits-sl-t4.h5" --overwrite

echo "== 4/7 labels inspect: provenance, shapes, size and quality of the stored labels"
labelopt labels inspect "$OUT/labels/digits-sl-t4.h5"

echo "== 5/7 train-student (stage two): a resnet20 student from the store, method sl, no teacher running"
labelopt train-student --data "$DATA" --labels "$OUT/labels/digits-sl-t4.h5" --student resnet20 --method sl \
  --epochs "$EPOCHS" --seed 1 --out "$OUT/runs/student-sl" --overwrite

echo "== 6/7 train-student: the same student (same seed) with ground-truth labels only (vanilla), for comparison"
labelopt train-student --data "$DATA" --student resnet20 --method vanilla --epochs "$EPOCHS" \
  --seed 1 --out "$OUT/runs/student-vanilla" --overwrite

echo "== 7/7 evaluate on the test split, side by side"
labelopt evaluate "$OUT/runs/teacher-resnet20/last.pt" "$OUT/runs/student-vanilla/last.pt" \
  "$OUT/runs/student-sl/last.pt" --data "$DATA" --out "$OUT/eval" --compare

echo
echo "quick start done in $(( $(date +%s) - start )) s (after set-up)"
echo "  data:        $DATA/{train,test}.beton, meta.json"
echo "  runs:        $OUT/runs/{teacher-resnet20,student-sl,student-vanilla}/{config.json,metrics.jsonl,last.pt}"
echo "               and the teacher's best.pt, chosen on its validation split"
echo "  label store: $OUT/labels/digits-sl-t4.h5 (schema: docs/label-store.md)"
echo "  evaluation:  $OUT/eval/{metrics.json,reliability-*.png}"
