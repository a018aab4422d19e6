#!/usr/bin/env bash
# The seed's CIFAR-100 table ("Performance change according to label generation method", students ResNet20 and
# ResNet110, three seeds each) reproduced with labelopt commands, printed beside the seed README's numbers, plus
# the authors' follow-up Aug-SL row (RICAP, 350 epochs, ResNet110 teacher) beside its published figures.
#
#   benchmarks/seed_table.sh [--dry-run] CIFAR100_ROOT OUT_DIR
#   CIFAR100_ROOT=... OUT=... benchmarks/seed_table.sh [--dry-run]
#
#   CIFAR100_ROOT holds cifar-100-python/ (the official python files; nothing is downloaded). OUT_DIR gets data/,
#   teachers/, labels/, runs/, eval/ and table.txt. Needs a GPU: 4 teachers, 45 students of 200 epochs and 6 of 350.
#   Every teacher and student trains with the seed's own recipe, `--config recipes/seed.toml` (200 epochs, lr 0.1
#   x0.1 at 60/120/160, batch 128, weight decay 5e-4: the seed README's command; its vanilla R20 67.66 is this
#   recipe's, not the CRD benchmark's 240 epochs).
#   --dry-run prints the commands that would run (finished steps are skipped as in a real run) and runs none.
#
# Environment (defaults in brackets):
#   SEEDS [0 1 2]                 student seeds of every row          STUDENTS [resnet20 resnet110]
#   T [4]                         temperature of every label store    VIEWS [cifar-crop-flip]  views of the stores
#   ENS_TEACHERS [resnet32 resnet44 resnet56]   the SL-Ens members (the seed does not list them; add resnet110 here)
#   KD_SOURCE [online]            kd row: online R32 teacher (--teacher), or "store" (an R32 store with --logits)
#   TEACHER_SEED [0]   DEVICE [auto]   EPOCHS [the recipe's 200; milestones keep its 30/60/80 % of the run]
#   TRAIN_FLAGS / GEN_FLAGS       extra flags for train + train-student / generate-labels, e.g. "--workers 8"
#   AUG_TEACHER [resnet110]  AUG_MIX [ricap]  AUG_K [32]   the Aug-SL row: its teacher, mix and records per image
#   AUG_SOURCE [store]            aug-sl from a store of AUG_K mix records per image, or "online" (fresh mixes)
#   The Aug-SL rows train with recipes/label-enhancement-long.toml (the follow-up's 350 epochs, lr 0.05, batch 64,
#   x0.1 at 150/200/250/300); EPOCHS scales it the same way.
#
# Resumable: a store that exists is complete (labelopt writes it under a temporary name), a partial one is
# finished by the same command; a run whose last.pt reaches the epochs in its config.json is skipped, one with a
# last.pt short of them continues with --resume, one without last.pt starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY="$REPO/.venv/bin/python"
LABELOPT="$REPO/.venv/bin/labelopt"

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

DRY=0
POSITIONAL=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
[ "${#POSITIONAL[@]}" -le 2 ] || { echo "too many arguments: ${POSITIONAL[*]}" >&2; usage; }
CIFAR100_ROOT=${POSITIONAL[0]:-${CIFAR100_ROOT:-}}
OUT=${POSITIONAL[1]:-${OUT:-}}
[ -n "$CIFAR100_ROOT" ] && [ -n "$OUT" ] || { echo "CIFAR100_ROOT and OUT_DIR are required" >&2; usage; }
if [ ! -d "$CIFAR100_ROOT/cifar-100-python" ]; then
  if [ "$DRY" = 1 ]; then
    echo "note: $CIFAR100_ROOT has no cifar-100-python/ folder (a real run stops here)" >&2
  else
    echo "$CIFAR100_ROOT has no cifar-100-python/ folder (the official CIFAR-100 python version)" >&2; usage
  fi
fi
[ -x "$LABELOPT" ] || { echo "$LABELOPT is missing: run scripts/setup.sh first" >&2; exit 2; }

read -r -a SEEDS <<< "${SEEDS:-0 1 2}"
read -r -a STUDENTS <<< "${STUDENTS:-resnet20 resnet110}"
read -r -a ENS_TEACHERS <<< "${ENS_TEACHERS:-resnet32 resnet44 resnet56}"
read -r -a TRAIN_FLAGS <<< "${TRAIN_FLAGS:-}"
read -r -a GEN_FLAGS <<< "${GEN_FLAGS:-}"
T=${T:-4}
VIEWS=${VIEWS:-cifar-crop-flip}
KD_SOURCE=${KD_SOURCE:-online}
TEACHER_SEED=${TEACHER_SEED:-0}
DEVICE=${DEVICE:-auto}
AUG_TEACHER=${AUG_TEACHER:-resnet110}
AUG_MIX=${AUG_MIX:-ricap}
AUG_K=${AUG_K:-32}
AUG_SOURCE=${AUG_SOURCE:-store}
case "$AUG_MIX" in mixup|cutmix|ricap) ;; *) echo "AUG_MIX must be mixup, cutmix or ricap" >&2; usage ;; esac
case "$AUG_SOURCE" in online|store) ;; *) echo "AUG_SOURCE must be online or store" >&2; usage ;; esac
[[ "$AUG_K" =~ ^[1-9][0-9]*$ ]] || { echo "AUG_K must be a positive integer" >&2; usage; }
[ "${#SEEDS[@]}" -ge 1 ] || { echo "SEEDS is empty" >&2; usage; }
[ "${#ENS_TEACHERS[@]}" -ge 2 ] || { echo "ENS_TEACHERS needs two or more teachers" >&2; usage; }
case "$KD_SOURCE" in online|store) ;; *) echo "KD_SOURCE must be online or store" >&2; usage ;; esac
[ -z "${EPOCHS:-}" ] || [[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || { echo "EPOCHS must be a positive integer" >&2; usage; }
recipe() {  # recipe NAME TOTAL "MILESTONES": sets RECIPE (with EPOCHS: the milestones at the same fractions)
  RECIPE=(--config "$REPO/recipes/$1.toml" --device "$DEVICE")
  if [ -n "${EPOCHS:-}" ]; then
    local e m milestones=()
    for m in $3; do  # inside the run, repeats merged
      e=$(( (EPOCHS * m + $2 / 2) / $2 ))
      if [ "$e" -ge 1 ] && [ "$e" -lt "$EPOCHS" ] && [[ " ${milestones[*]-} " != *" $e "* ]]; then milestones+=("$e"); fi
    done
    RECIPE+=(--epochs "$EPOCHS" --milestones "$(IFS=,; echo "${milestones[*]-}")")
  fi
  RECIPE+=(${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"})
}
recipe seed 200 "60 120 160"
SEED_RECIPE=("${RECIPE[@]}")
recipe label-enhancement-long 350 "150 200 250 300"
LONG_RECIPE=("${RECIPE[@]}")
RECIPE=("${SEED_RECIPE[@]}")
GEN=(--device "$DEVICE" ${GEN_FLAGS[@]+"${GEN_FLAGS[@]}"})

DATA="$OUT/data/cifar100"
LABELS="$OUT/labels"
EVAL="$OUT/eval"

say() { echo "seed_table: $*" >&2; }

run() {  # print a command; run it unless --dry-run
  if [ "$DRY" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'; echo
  else
    { printf '+ '; printf '%q ' "$@"; echo; } >&2
    "$@"
  fi
}

run_complete() {  # run_complete DIR: its last.pt reaches the epochs its config.json asks for
  [ -f "$1/last.pt" ] && [ -f "$1/config.json" ] || return 1
  "$PY" - "$1" <<'PY'
import json, sys
from pathlib import Path

import torch

run = Path(sys.argv[1])
config = json.loads((run / "config.json").read_text())
body = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
total = int(config["epochs"]) + int(config.get("warmup_epochs", 0))
sys.exit(0 if int(body["epoch"]) + 1 >= total else 1)
PY
}

train_run() {  # train_run DIR labelopt-command...: skip a complete run, resume a started one
  local dir=$1; shift
  if run_complete "$dir"; then
    say "complete, skipped: $dir"
  elif [ -f "$dir/last.pt" ]; then
    run "$@" --out "$dir" --resume
  else
    run "$@" --out "$dir" --overwrite
  fi
}

make_store() {  # make_store PATH generate-labels options...: a finished store exists; a partial one resumes
  local path=$1; shift
  if [ -f "$path" ]; then
    say "store exists, skipped: $path"
  else
    run "$LABELOPT" generate-labels --data "$DATA" "$@" --out "$path" "${GEN[@]}"
  fi
}

teacher_ckpt() { echo "$OUT/teachers/$1-seed$TEACHER_SEED/last.pt"; }

# -- data -----------------------------------------------------------------------------------------------------
if [ -f "$DATA/meta.json" ]; then
  say "prepared data exists, skipped: $DATA"
else
  run "$LABELOPT" prepare --dataset cifar100 --root "$CIFAR100_ROOT" --out "$OUT/data"
fi

# -- teachers: R32 (KD, SL-Enc), R44 (SL), the SL-Ens members and Aug-SL's, one seed each, the seed's recipe -----
TEACHERS=()
for arch in resnet32 resnet44 "${ENS_TEACHERS[@]}" "$AUG_TEACHER"; do
  [[ " ${TEACHERS[*]-} " == *" $arch "* ]] || TEACHERS+=("$arch")
done
for arch in "${TEACHERS[@]}"; do
  train_run "$(dirname "$(teacher_ckpt "$arch")")" "$LABELOPT" train --data "$DATA" --arch "$arch" \
    --seed "$TEACHER_SEED" "${RECIPE[@]}"
done

# -- stage one: the label stores ----------------------------------------------------------------------------------
ENS_NAME=$(IFS=-; echo "${ENS_TEACHERS[*]//resnet/r}")
STORE_SL="$LABELS/sl-r44-t$T.h5"
STORE_ENC="$LABELS/enc-r32-t$T.h5"
STORE_ENS="$LABELS/ens-$ENS_NAME-t$T.h5"
# Random labels are one vector per sample, the same for every view: an identity store paired with the usual
# crop + flip of the images is the same training as a 162-view store, at 1/162 of its size.
STORE_RANDOM="$LABELS/random.h5"
STORE_KD="$LABELS/kd-r32-logits.h5"
ENS_ARGS=()
for arch in "${ENS_TEACHERS[@]}"; do ENS_ARGS+=(--teacher "$(teacher_ckpt "$arch")"); done
[ "$DRY" = 1 ] || mkdir -p "$LABELS" "$EVAL"
make_store "$STORE_SL" --method sl --teacher "$(teacher_ckpt resnet44)" --temperature "$T" --views "$VIEWS"
make_store "$STORE_ENC" --method sl-enc --teacher "$(teacher_ckpt resnet32)" --temperature "$T" --views "$VIEWS"
make_store "$STORE_ENS" --method sl-ens "${ENS_ARGS[@]}" --temperature "$T" --views "$VIEWS"
make_store "$STORE_RANDOM" --method random --views identity
STORE_AUG="$LABELS/aug-$AUG_MIX$AUG_K-${AUG_TEACHER/resnet/r}-t$T.h5"
if [ "$AUG_SOURCE" = store ]; then
  # K RICAP records per training image, each the teacher's label of its mixed image (paid once, 350 epochs reuse it).
  make_store "$STORE_AUG" --method sl --teacher "$(teacher_ckpt "$AUG_TEACHER")" --temperature "$T" \
    --views "mix:$AUG_MIX:$AUG_K"
  AUG_ARGS=(--labels "$STORE_AUG")
else
  AUG_ARGS=(--teacher "$(teacher_ckpt "$AUG_TEACHER")" --mix "$AUG_MIX" --temperature "$T")
fi
if [ "$KD_SOURCE" = store ]; then
  # kd reads the stored logits at its own temperature (4); the stored soft labels are unused.
  make_store "$STORE_KD" --method sl --teacher "$(teacher_ckpt resnet32)" --temperature "$T" --views "$VIEWS" --logits
  KD_ARGS=(--labels "$STORE_KD")
else
  KD_ARGS=(--teacher "$(teacher_ckpt resnet32)")
fi

# -- stage two: the table's rows, every seed ----------------------------------------------------------------------
row_args() {  # row_args ROW: sets ARGS to that row's train-student options
  case "$1" in
    vanilla) ARGS=(--method vanilla) ;;
    ls) ARGS=(--method ls --label-smoothing 0.1) ;;
    random) ARGS=(--method sl --labels "$STORE_RANDOM") ;;
    kd) ARGS=(--method kd "${KD_ARGS[@]}") ;;
    sl) ARGS=(--method sl --labels "$STORE_SL") ;;
    sl-enc) ARGS=(--method sl --labels "$STORE_ENC") ;;
    sl-ens) ARGS=(--method sl --labels "$STORE_ENS") ;;
    sl-kd) ARGS=(--method sl-kd --labels "$STORE_ENS") ;;
    aug-sl) ARGS=(--method aug-sl "${AUG_ARGS[@]}") ;;
  esac
  if [ "$1" = aug-sl ]; then RECIPE=("${LONG_RECIPE[@]}"); else RECIPE=("${SEED_RECIPE[@]}"); fi
}
rows_for() {  # the seed's rows per student (the random control for ResNet20 only), then the follow-up's Aug-SL
  if [ "$1" = resnet20 ]; then echo "vanilla ls random kd sl sl-enc sl-ens sl-kd aug-sl"
  else echo "vanilla ls kd sl sl-enc sl-ens sl-kd aug-sl"; fi
}

MANIFEST="$EVAL/manifest.tsv"
[ "$DRY" = 1 ] || : > "$MANIFEST"
for student in "${STUDENTS[@]}"; do
  for row in $(rows_for "$student"); do
    row_args "$row"
    for seed in "${SEEDS[@]}"; do
      train_run "$OUT/runs/$student/$row/seed$seed" "$LABELOPT" train-student --data "$DATA" --student "$student" \
        "${ARGS[@]}" --seed "$seed" "${RECIPE[@]}"
    done
  done
done

# -- evaluation: every row's seeds together (mean ± std), the teachers one by one -------------------------------
evaluate() {  # evaluate NAME CHECKPOINT...: labelopt evaluate --json into EVAL/NAME.json
  local name=$1; shift
  if [ "$DRY" = 1 ]; then
    printf '%q ' "$LABELOPT" evaluate "$@" --data "$DATA" --device "$DEVICE" --json; echo "> $EVAL/$name.json"
  else
    say "evaluate $name"
    "$LABELOPT" evaluate "$@" --data "$DATA" --device "$DEVICE" --json > "$EVAL/$name.json.tmp"
    mv "$EVAL/$name.json.tmp" "$EVAL/$name.json"
  fi
}
for arch in "${TEACHERS[@]}"; do
  evaluate "teacher-$arch" "$(teacher_ckpt "$arch")"
  [ "$DRY" = 1 ] || printf 'teacher\t%s\t-\t%s\n' "$arch" "$EVAL/teacher-$arch.json" >> "$MANIFEST"
done
for student in "${STUDENTS[@]}"; do
  for row in $(rows_for "$student"); do
    ckpts=()
    for seed in "${SEEDS[@]}"; do ckpts+=("$OUT/runs/$student/$row/seed$seed/last.pt"); done
    evaluate "$student-$row" "${ckpts[@]}"
    [ "$DRY" = 1 ] || printf '%s\t%s\t%s\t%s\n' "$student" "$row" "${#SEEDS[@]}" "$EVAL/$student-$row.json" \
      >> "$MANIFEST"
  done
done
[ "$DRY" = 1 ] && exit 0

# -- the table ----------------------------------------------------------------------------------------------------
"$PY" - "$MANIFEST" "$OUT/table.txt" "$T" "$KD_SOURCE" "${ENS_TEACHERS[*]}" "$AUG_TEACHER" "$AUG_MIX" "$AUG_K" \
  "$AUG_SOURCE" <<'PY'
import json
import sys
from pathlib import Path

from labelopt.pipeline.jobs.reports import format_table

manifest, table_path, temperature, kd_source, ens, aug_teacher, aug_mix, aug_k, aug_source = sys.argv[1:10]
# The seed README's table "Performance change according to label generation method with CIFAR100":
# top-1 % mean ± std and ECE mean ± std over its runs (published figures, copied as printed).
SEED = {
    ("resnet20", "vanilla"): ((67.66, 0.05), (0.065, 0.0)),
    ("resnet20", "ls"): ((67.84, 0.24), (0.0627, 0.0005)),
    ("resnet20", "random"): ((1.00, 0.0), (0.0, 0.0)),
    ("resnet20", "kd"): ((68.20, 0.46), (0.061, 0.0024)),
    ("resnet20", "sl"): ((69.17, 0.17), (0.0213, 0.0025)),
    ("resnet20", "sl-enc"): ((69.33, 0.06), (0.016, 0.0024)),
    ("resnet20", "sl-ens"): ((69.66, 0.37), (0.0467, 0.0037)),
    ("resnet20", "sl-kd"): ((69.67, 0.15), (0.014, 0.0014)),
    ("resnet110", "vanilla"): ((71.59, 0.63), (0.144, 0.0051)),
    ("resnet110", "ls"): ((71.62, 1.3), (0.0363, 0.0046)),
    ("resnet110", "kd"): ((71.93, 0.78), (0.1357, 0.0025)),
    ("resnet110", "sl"): ((74.21, 0.25), (0.0353, 0.0009)),
    ("resnet110", "sl-enc"): ((74.11, 0.17), (0.0213, 0.0009)),
    ("resnet110", "sl-ens"): ((75.04, 0.31), (0.0603, 0.0029)),
    ("resnet110", "sl-kd"): ((75.34, 0.29), (0.0117, 0.0021)),
}
# The follow-up README's Aug-SL+ row (RICAP, 350 epochs, ResNet110 teacher, 3 seeds; top-1 % and ECE means, no
# std published): shared/REFERENCE.md, "A later version of the seed's work".
FOLLOWUP = {("resnet20", "aug-sl"): (69.41, 0.073), ("resnet110", "aug-sl"): (77.28, 0.025)}
ROW_NAMES = {"aug-sl": "Aug-SL", "vanilla": "Vanilla", "ls": "LS", "random": "random", "kd": "KD", "sl": "SL", "sl-enc": "SL-Enc",
             "sl-ens": "SL-Ens", "sl-kd": "SL-KD"}
SHORT = lambda arch: arch.replace("resnet", "R")
ens_names = "+".join(SHORT(a) for a in ens.split())
TEACHER_OF = {"vanilla": "-", "ls": "-", "random": "-", "kd": f"R32 ({kd_source})", "sl": "R44",
              "sl-enc": "R32", "sl-ens": ens_names, "sl-kd": ens_names,
              "aug-sl": f"{SHORT(aug_teacher)} ({aug_mix}, " + (f"store K={aug_k})" if aug_source == "store"
                                                                 else "online)")}


def pm(pair):
    return {"mean": pair[0], "std": pair[1]}


rows, records = [], []
for line in Path(manifest).read_text().splitlines():
    student, row, seeds, path = line.split("\t")
    result = json.loads(Path(path).read_text())
    summary = result["summary"]
    top1 = {k: summary["top1"][k] for k in ("mean", "std")}
    ece = {k: summary["ece"][k] for k in ("mean", "std")}
    if student == "teacher":
        rows.append({"student": SHORT(row), "row": "teacher", "teacher": "-", "n": 1, "top1": top1["mean"],
                     "ece": ece["mean"]})
        records.append({"student": row, "row": "teacher", "top1": summary["top1"], "ece": summary["ece"]})
        continue
    seed = SEED.get((student, row))
    entry = {"student": SHORT(student), "row": ROW_NAMES[row], "teacher": TEACHER_OF[row], "n": int(seeds),
             "top1": top1, "ece": ece}
    if seed is not None:
        entry.update({"seed_top1": pm(seed[0]), "seed_ece": pm(seed[1]), "delta": top1["mean"] - seed[0][0]})
    followup = FOLLOWUP.get((student, row))
    if followup is not None:  # published means only
        entry.update({"seed_top1": followup[0], "seed_ece": followup[1], "delta": top1["mean"] - followup[0]})
    rows.append(entry)
    records.append({"student": student, "row": row, "teacher": TEACHER_OF[row], "top1": summary["top1"],
                    "ece": summary["ece"], "seed_readme": {"top1": seed[0], "ece": seed[1]} if seed else None,
                    "followup_readme": {"top1": followup[0], "ece": followup[1]} if followup else None})

table = format_table(rows, [("student", "student"), ("row", "method"), ("teacher", "teacher"), ("n", "seeds"),
                            ("top1", "top-1 % (ours)"), ("ece", "ECE (ours)"),
                            ("seed_top1", "top-1 % (published)"), ("seed_ece", "ECE (published)"),
                            ("delta", "Δ top-1")])
note = (f"CIFAR-100 test split, last epoch of each run, mean ± std (sample std) over seeds; label stores at "
        f"T {temperature}. Seed README: its table 'Performance change according to label generation method', "
        f"as published. Both trained with the seed's recipe (recipes/seed.toml), except its extra rotation "
        f"augmentation and ImageNet normalization; its reporting (which epoch, how many runs) is not stated. "
        f"Aug-SL rows: the published column is the follow-up README's Aug-SL+ (RICAP, 350 epochs, ResNet110 "
        f"teacher; means of 3 seeds, no std published); ours train with recipes/label-enhancement-long.toml from a "
        f"teacher trained with the seed's recipe.")
Path(table_path).write_text(table + "\n\n" + note + "\n")
Path(table_path).with_suffix(".json").write_text(json.dumps(records, indent=2) + "\n")
print(table)
print()
print(note)
PY
