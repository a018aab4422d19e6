#!/usr/bin/env bash
# The seed's CIFAR-100 table ("Performance change according to label generation method", students ResNet20 and
# ResNet110, three seeds each) beside the seed README's numbers, plus the authors' follow-up Aug-SL row. A thin
# wrapper: it prepares CIFAR-100 once, then runs `labelopt table cifar100-resnet20` and `labelopt table
# cifar100-resnet110` into one OUT_DIR, where they share the teachers and the label stores (tables/*.toml hold
# the rows, recipes, teachers, stores and the published numbers).
#
#   benchmarks/seed_table.sh [--dry-run] CIFAR100_ROOT OUT_DIR [labelopt table options: --jobs, --device, --rows ...]
#
#   CIFAR100_ROOT holds cifar-100-python/ (the official python files; nothing is downloaded). Needs a GPU.
#   --dry-run prints each table's steps with their state (done, resume, new) and runs none.
set -euo pipefail
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
DRY=()
if [ "${1:-}" = --dry-run ]; then DRY=(--dry-run); shift; fi
[ $# -ge 2 ] && [ "${1#-}" = "$1" ] && [ "${2#-}" = "$2" ] || usage
ROOT=$(realpath -m -- "$1") OUT=$(realpath -m -- "$2")
shift 2
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
command -v labelopt > /dev/null || { echo "labelopt is not on PATH: run scripts/setup.sh first" >&2; exit 2; }
DATA="$OUT/data/cifar100"
if [ ! -f "$DATA/meta.json" ]; then
  if [ "${#DRY[@]}" = 1 ]; then
    echo "[new] labelopt prepare --dataset cifar100 --root $ROOT --out $OUT/data"
  else
    [ -d "$ROOT/cifar-100-python" ] || { echo "$ROOT has no cifar-100-python/ folder" >&2; exit 2; }
    labelopt prepare --dataset cifar100 --root "$ROOT" --out "$OUT/data"
  fi
fi
for table in cifar100-resnet20 cifar100-resnet110; do
  labelopt table "$table" --out "$OUT" --data "$DATA" ${DRY[@]+"${DRY[@]}"} "$@"
done
