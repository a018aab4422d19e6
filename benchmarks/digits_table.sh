#!/usr/bin/env bash
# Every label method and every distillation baseline on the embedded digits, resnet20 students from a resnet56
# teacher, three seeds each, mean ± std of top-1, top-5, NLL and ECE, and the seed README's CIFAR-100 directions
# answered from these numbers. A thin wrapper over `labelopt table digits`: tables/digits.toml holds the rows,
# teachers, stores, seeds and epochs (edit a copy and pass it to `labelopt table` for other settings).
#
#   benchmarks/digits_table.sh OUT [--smoke] [--dry-run] [--rows a,b] [--seeds 0,1] [--jobs N] [--device D] [--json]
#
#   Every option after OUT goes to `labelopt table` (labelopt table --help). From the environment, as before:
#   ROWS="vanilla sl" (--rows), SEEDS="0 1" (--seeds), JOBS [2] (--jobs), DEVICE (--device).
#   OUT gets data/, teachers/, labels/, runs/<row>/seed-S/, logs/, eval/, table.md and table.json; run the same
#   command again after a stop and it continues.
set -euo pipefail
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
OUT=$(realpath -m -- "$1")
shift
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
command -v labelopt > /dev/null || { echo "labelopt is not on PATH: run scripts/setup.sh first" >&2; exit 2; }
ARGS=(--jobs "${JOBS:-2}")
[ -z "${ROWS:-}" ] || ARGS+=(--rows "$(tr -s ' ' ',' <<< "$ROWS")")
[ -z "${SEEDS:-}" ] || ARGS+=(--seeds "$(tr -s ' ' ',' <<< "$SEEDS")")
[ -z "${DEVICE:-}" ] || ARGS+=(--device "$DEVICE")
exec labelopt table digits --out "$OUT" "${ARGS[@]}" "$@"
