#!/usr/bin/env bash
# Evidence on real data on one machine: every label method and every distillation baseline on the embedded
# digits (scikit-learn's 8x8 handwritten digits, upscaled to 32x32; 1,437 train / 360 test images), resnet20
# students from a resnet56 teacher (SL-Ens / SL-KD: an ensemble of resnet32, resnet44 and resnet56), three seeds
# each, mean ± std of top-1, NLL and ECE at the last and the best epoch, then the seed README's CIFAR-100
# directions (does SL lower ECE? does SL-KD beat KD? ...) answered from these numbers.
#
#   benchmarks/digits_table.sh OUT [--smoke] [--dry-run]
#
#   OUT gets data/, teachers/, labels/, runs/<row>/seed<k>/, eval/ (manifest, settings, evaluate's JSON),
#   table.md (the markdown table and the directions) and table.json (every number).
#   --smoke    every row once: 1 seed, 1 epoch, warm-ups 1, teachers 1 epoch (resnet20; ensemble resnet20 +
#              resnet32). CI runs it (tests/test_digits_table.py).
#   --dry-run  print the commands that would run (finished steps are skipped as in a real run); runs none.
#
# Rows: vanilla, ls, random (a random-label store), sl, sl+gt (teacher labels mixed with the one-hot truth),
# sl-enc, sl-ens, sl-kd (from the ensemble's store), then every distillation baseline `labelopt methods` lists
# (kd, fitnet, at, sp, vid, rkd, pkt, ab, ft, crd, crd+kd, kdss), each with the online teacher (--teacher).
# Methods run with their own defaults (`labelopt methods`; the stores with generate-labels' default temperature),
# except the warm-ups of ab, ft and kdss: their defaults belong to the 240-epoch recipe and are scaled by
# EPOCHS / 240 (at least 1) to keep the same share of the run.
# Then the mixed rows: vanilla+mix (MIX's mixed one-hot, no teacher), aug-sl and aug-sl-kd (Aug-SL: the teacher's
# label of each mixed image, from a store of MIX_K mix records per image, `--views mix:MIX:MIX_K`).
# Label stores use identity views: one label per image, the student's crop + flip drawn independently of it.
# Exact views (VIEWS=cifar-crop-flip, 162 per image) would cost ~17 min per resnet56 store on 2 CPU cores.
#
# Environment (defaults in brackets):
#   SEEDS [0 1 2]   EPOCHS [6] student epochs   TEACHER_EPOCHS [15]   TEACHER_SEED [0]   STUDENT [resnet20]
#   TEACHER [resnet56]   ENS_TEACHERS [resnet32 resnet44 resnet56]   MIX_GT [0.5] the sl+gt store's --mix-gt
#   TEMPERATURE [generate-labels' default] of the stores   VIEWS [identity]   WARMUP_EPOCHS [scaled] all warm-ups
#   MIX [ricap]   MIX_K [8] mix records per image in the aug-sl store
#   ROWS [all] a subset, e.g. "vanilla sl"   DEVICE [auto]   TRAIN_FLAGS / GEN_FLAGS extra flags
#   JOBS [2] students trained at once, each with nproc / JOBS torch threads (their logs in OUT/logs/): a command's
#        ~10 s start (numba compiling FFCV's pipeline) is single-threaded, and small convolutions scale poorly
#        over threads, so two one-thread lanes beat one two-thread run on 2 cores
#
# Time, measured: 316 s on one H200 with JOBS=8 (16 cores). On 2 CPU cores, hours: a student epoch with the online
# resnet56 teacher runs at ~34 img/s on one thread (~42 s per 1,437-image epoch, three times the ~12.7 s first
# estimated), so the 27 online-teacher runs alone take about an hour per lane. The smoke: about 5 min on 2 cores.
#
# Resumable: a run folder whose metrics.jsonl holds every epoch and whose last.pt is newer is skipped, one with
# a last.pt short of that continues with --resume, one without last.pt starts over; a run made with other
# epochs stops the script. Teachers are runs too; a store that exists is complete (labelopt renames it when
# done) and a partial one is finished by the same command. Delete runs/<row>/ to rerun one row; after
# retraining a teacher, delete labels/ as well.
set -euo pipefail

usage() { sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

OUT="" SMOKE=0 DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) [ -z "$OUT" ] || { echo "one OUT folder only (got $OUT and $1)" >&2; usage; }; OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "OUT is required" >&2; usage; }
OUT=$(realpath -m -- "$OUT")
cd "$(dirname "$0")/.."
REPO=$PWD
[ -d "$REPO/.venv/bin" ] && export PATH="$REPO/.venv/bin:$PATH"
command -v labelopt > /dev/null || { echo "labelopt is not on PATH: run scripts/setup.sh first" >&2; exit 2; }
HELPER=(python "$REPO/benchmarks/digits_table_report.py")

if [ "$SMOKE" = 1 ]; then
  D_SEEDS="0" D_EPOCHS=1 D_TEACHER_EPOCHS=1 D_TEACHER=resnet20 D_ENS="resnet20 resnet32"
else
  D_SEEDS="0 1 2" D_EPOCHS=6 D_TEACHER_EPOCHS=15 D_TEACHER=resnet56 D_ENS="resnet32 resnet44 resnet56"
fi
read -r -a SEEDS <<< "${SEEDS:-$D_SEEDS}"
read -r -a ENS_TEACHERS <<< "${ENS_TEACHERS:-$D_ENS}"
read -r -a TRAIN_FLAGS <<< "${TRAIN_FLAGS:-}"
read -r -a GEN_FLAGS <<< "${GEN_FLAGS:-}"
EPOCHS=${EPOCHS:-$D_EPOCHS}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-$D_TEACHER_EPOCHS}
TEACHER=${TEACHER:-$D_TEACHER}
TEACHER_SEED=${TEACHER_SEED:-0}
STUDENT=${STUDENT:-resnet20}
MIX_GT=${MIX_GT:-0.5}
TEMPERATURE=${TEMPERATURE:-}
VIEWS=${VIEWS:-identity}
MIX=${MIX:-ricap}
MIX_K=${MIX_K:-8}
case "$MIX" in mixup|cutmix|ricap) ;; *) echo "MIX must be mixup, cutmix or ricap (got '$MIX')" >&2; exit 2 ;; esac
[[ $MIX_K =~ ^[1-9][0-9]*$ ]] || { echo "MIX_K must be a whole number >= 1 (got '$MIX_K')" >&2; exit 2; }
WARMUP_EPOCHS=${WARMUP_EPOCHS:-}
DEVICE=${DEVICE:-auto}
JOBS=${JOBS:-2}
for name in EPOCHS TEACHER_EPOCHS TEACHER_SEED JOBS; do
  [[ ${!name} =~ ^[0-9]+$ ]] || { echo "$name must be a whole number (got '${!name}')" >&2; exit 2; }
done
[[ $WARMUP_EPOCHS =~ ^[0-9]*$ ]] || { echo "WARMUP_EPOCHS must be a whole number" >&2; exit 2; }
[ "$EPOCHS" -ge 1 ] && [ "$TEACHER_EPOCHS" -ge 1 ] && [ "$JOBS" -ge 1 ] || {
  echo "EPOCHS, TEACHER_EPOCHS and JOBS must be >= 1" >&2; exit 2; }
# Each lane gets its share of the cores for torch's threads (unless OMP_NUM_THREADS says otherwise).
LANE_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
[ "${#SEEDS[@]}" -ge 1 ] || { echo "SEEDS is empty" >&2; exit 2; }
[ "${#ENS_TEACHERS[@]}" -ge 2 ] || { echo "ENS_TEACHERS needs two or more architectures" >&2; exit 2; }

METHODS_JSON=$(labelopt methods --json)
BASELINES=$(python -c '
import json, sys
print(" ".join(m["method"] for m in json.load(sys.stdin)
               if m["teacher_signals"] and m["method"] not in ("sl", "sl-kd") and m["mix"] == "-"))
' <<< "$METHODS_JSON")
WARMUPS=$("${HELPER[@]}" warmups "$EPOCHS" "$SMOKE" "$WARMUP_EPOCHS" <<< "$METHODS_JSON")
ALL_ROWS="vanilla ls random sl sl+gt sl-enc sl-ens sl-kd vanilla+mix aug-sl aug-sl-kd $BASELINES"
read -r -a ROWS <<< "${ROWS:-$ALL_ROWS}"
for row in "${ROWS[@]}"; do
  [[ " $ALL_ROWS " == *" $row "* ]] || { echo "unknown row '$row' (rows: $ALL_ROWS)" >&2; exit 2; }
done

DATA="$OUT/data/digits"
EVAL="$OUT/eval"
MANIFEST="$EVAL/manifest.tsv"
START=$(date +%s)

say() { echo "digits_table: $*" >&2; }

run() {  # print a command; run it unless --dry-run
  if [ "$DRY" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'; echo
  else
    { printf '+ '; printf '%q ' "$@"; echo; } >&2
    "$@"
  fi
}

how_to_run() {  # how_to_run DIR EPOCHS WARMUP: sets HOW to --overwrite, --resume or "" (complete: skip)
  local state why
  IFS=$'\t' read -r state why < <("${HELPER[@]}" state "$1" "$2" "$3")
  case "$state" in
    complete) say "complete, skipped: $1 ($why)"; HOW="" ;;
    partial) HOW=--resume ;;
    absent) HOW=--overwrite ;;
    *) echo "$why" >&2; exit 2 ;;
  esac
}

manifest() {  # manifest KIND ROW SEED DIR: what the evaluation and the table read
  [ "$DRY" = 1 ] || printf '%s\t%s\t%s\t%s\n' "$@" >> "$MANIFEST"
}

# -- lanes: up to JOBS commands at once, each logging to OUT/logs/ ------------------------------------------------
stop_lanes() {  # on exit or interrupt: stop what still runs (a run resumes, a store finishes, on the next start)
  local pids
  pids=$(jobs -p)
  [ -z "$pids" ] || kill $pids 2> /dev/null || true
}

launch() {  # launch NAME COMMAND...: run now (JOBS 1, --dry-run) or in a lane, its output in OUT/logs/NAME.log
  local log="$OUT/logs/$1.log"
  shift
  if [ "$DRY" = 1 ] || [ "$JOBS" -le 1 ]; then run "$@"; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  { printf '+ '; printf '%q ' "$@"; echo "> $log"; } >&2
  (
    OMP_NUM_THREADS=$LANE_THREADS "$@" > "$log" 2>&1 &
    pid=$!
    trap 'kill $pid 2> /dev/null' TERM
    if wait "$pid"; then say "finished: $log"; else echo "$log" >> "$EVAL/failed"; fi
  ) &
}

lanes_done() {  # wait for every lane; stop with the failed commands' last lines if any failed
  wait
  [ -s "$EVAL/failed" ] 2> /dev/null || return 0
  while read -r log; do echo "failed, last lines of $log:" >&2; tail -n 5 "$log" >&2; done < "$EVAL/failed"
  exit 1
}

# -- stage one: the teachers, then the stores made from them (PHASE says which the need_* functions make) ---------
declare -A READY=()
teacher_ckpt() { echo "$OUT/teachers/$1-seed$TEACHER_SEED/last.pt"; }
short() { local IFS=-; set -- "${@//resnet/r}"; echo "$*"; }

need_teacher() {  # need_teacher ARCH: in the teachers phase, train it (TEACHER_EPOCHS, the recipe otherwise)
  local dir
  dir=$(dirname "$(teacher_ckpt "$1")")
  [ "$PHASE" = teachers ] && [ -z "${READY[teacher-$1]:-}" ] || return 0
  READY[teacher-$1]=1
  manifest teacher "$1" "$TEACHER_SEED" "$dir"
  how_to_run "$dir" "$TEACHER_EPOCHS" 0
  [ -z "$HOW" ] || launch "teacher-$1" labelopt train --data "$DATA" --arch "$1" --epochs "$TEACHER_EPOCHS" \
    --seed "$TEACHER_SEED" --device "$DEVICE" ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"} --out "$dir" "$HOW"
}

TEMP_ARGS=() TEMP_TAG=""
[ -z "$TEMPERATURE" ] || { TEMP_ARGS=(--temperature "$TEMPERATURE"); TEMP_TAG="-t$TEMPERATURE"; }

need_store() {  # need_store KIND: sets STORE to the kind's label store; in the stores phase, makes it
  local kind=$1 gen=()
  case "$kind" in
    sl) need_teacher "$TEACHER"; STORE="sl-$(short "$TEACHER")-$VIEWS$TEMP_TAG"
        gen=(--method sl --teacher "$(teacher_ckpt "$TEACHER")" --views "$VIEWS" "${TEMP_ARGS[@]}") ;;
    sl+gt) need_teacher "$TEACHER"; STORE="sl-$(short "$TEACHER")-gt$MIX_GT-$VIEWS$TEMP_TAG"
        gen=(--method sl --teacher "$(teacher_ckpt "$TEACHER")" --mix-gt "$MIX_GT" --views "$VIEWS"
             "${TEMP_ARGS[@]}") ;;
    sl-enc) need_teacher "$TEACHER"; STORE="enc-$(short "$TEACHER")-$VIEWS$TEMP_TAG"
        gen=(--method sl-enc --teacher "$(teacher_ckpt "$TEACHER")" --views "$VIEWS" "${TEMP_ARGS[@]}") ;;
    sl-ens) STORE="ens-$(short "${ENS_TEACHERS[@]}")-$VIEWS$TEMP_TAG"
        gen=(--method sl-ens --views "$VIEWS" "${TEMP_ARGS[@]}")
        for arch in "${ENS_TEACHERS[@]}"; do need_teacher "$arch"; gen+=(--teacher "$(teacher_ckpt "$arch")"); done ;;
    random) STORE="random"  # one random vector per image, whatever the view: identity is the whole store
        gen=(--method random --views identity) ;;
    aug) need_teacher "$TEACHER"; STORE="aug-$(short "$TEACHER")-$MIX$MIX_K$TEMP_TAG"
        gen=(--method sl --teacher "$(teacher_ckpt "$TEACHER")" --views "mix:$MIX:$MIX_K" "${TEMP_ARGS[@]}") ;;
  esac
  STORE="$OUT/labels/$STORE.h5"
  [ "$PHASE" = stores ] && [ -z "${READY[store-$kind]:-}" ] || return 0
  READY[store-$kind]=1
  if [ -f "$STORE" ]; then
    say "store exists, skipped: $STORE"
  else
    launch "store-$kind" labelopt generate-labels --data "$DATA" "${gen[@]}" --out "$STORE" --device "$DEVICE" \
      ${GEN_FLAGS[@]+"${GEN_FLAGS[@]}"}
  fi
}

# -- stage two: one train-student command per row and seed --------------------------------------------------------
row_args() {  # row_args ROW: sets ARGS (train-student options) and WARMUP; in stage one's phases, makes its needs
  WARMUP=0
  case "$1" in
    vanilla|ls) ARGS=(--method "$1") ;;
    random|sl|sl+gt|sl-enc|sl-ens) need_store "$1"; ARGS=(--method sl --labels "$STORE") ;;
    sl-kd) need_store sl-ens; ARGS=(--method sl-kd --labels "$STORE") ;;
    vanilla+mix) ARGS=(--method vanilla --mix "$MIX") ;;
    aug-sl|aug-sl-kd) need_store aug; ARGS=(--method "$1" --labels "$STORE") ;;
    *) need_teacher "$TEACHER"; ARGS=(--method "$1" --teacher "$(teacher_ckpt "$TEACHER")")
       for pair in $WARMUPS; do
         if [ "${pair%%=*}" = "$1" ]; then WARMUP=${pair#*=}; ARGS+=(--method-option "warmup_epochs=$WARMUP"); fi
       done
       # The smoke's 1-epoch teacher has large stage maps that send ft's BatchNorm-free paraphraser (the
       # benchmark's) to nan; the smoke proves the row runs, so it uses the paraphraser with BatchNorm.
       if [ "$1" = ft ] && [ "$SMOKE" = 1 ]; then ARGS+=(--method-option paraphraser_bn=1); fi ;;
  esac
}

# -- run ----------------------------------------------------------------------------------------------------------
if [ -f "$DATA/meta.json" ]; then
  say "prepared data exists, skipped: $DATA"
else
  run labelopt prepare --dataset digits --out "$OUT/data"
fi
[ "$DRY" = 1 ] || { mkdir -p "$EVAL" "$OUT/logs" "$OUT/labels"; : > "$MANIFEST"; : > "$EVAL/failed"; }
trap stop_lanes EXIT
trap 'exit 130' INT TERM  # exit runs stop_lanes
for PHASE in teachers stores; do
  for row in "${ROWS[@]}"; do row_args "$row"; done
  lanes_done
done
PHASE=students
# The costliest rows first (kdss and the other warm-up methods, then the online teachers), so no lane idles long
# at the end.
WARM=() ONLINE=() REST=()
for row in "${ROWS[@]}"; do
  row_args "$row"
  if [ "$WARMUP" -gt 0 ]; then WARM=("$row" ${WARM[@]+"${WARM[@]}"})
  elif [[ " ${ARGS[*]} " == *" --teacher "* ]]; then ONLINE+=("$row")
  else REST+=("$row"); fi
done
for row in ${WARM[@]+"${WARM[@]}"} ${ONLINE[@]+"${ONLINE[@]}"} ${REST[@]+"${REST[@]}"}; do
  row_args "$row"
  for seed in "${SEEDS[@]}"; do
    dir="$OUT/runs/$row/seed$seed"
    how_to_run "$dir" "$EPOCHS" "$WARMUP"
    [ -z "$HOW" ] || launch "$row-seed$seed" labelopt train-student --data "$DATA" --student "$STUDENT" \
      "${ARGS[@]}" --epochs "$EPOCHS" --seed "$seed" --device "$DEVICE" ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"} \
      --out "$dir" "$HOW"
  done
done
lanes_done
trap - EXIT
for row in "${ROWS[@]}"; do  # the table's order
  for seed in "${SEEDS[@]}"; do manifest student "$row" "$seed" "$OUT/runs/$row/seed$seed"; done
done

# -- evaluation and the table ---------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  echo "labelopt evaluate <last.pt of every run above, best.pt where its best epoch is not the last> --data" \
    "$(printf '%q' "$DATA") --device $DEVICE --json > $(printf '%q' "$EVAL/evaluate.json")"
  echo "python benchmarks/digits_table_report.py report ... > $(printf '%q' "$OUT/table.md")"
  exit 0
fi
mapfile -t CHECKPOINTS < <("${HELPER[@]}" checkpoints "$MANIFEST")
say "evaluate ${#CHECKPOINTS[@]} checkpoints"
labelopt evaluate "${CHECKPOINTS[@]}" --data "$DATA" --device "$DEVICE" --json > "$EVAL/evaluate.json.tmp"
mv "$EVAL/evaluate.json.tmp" "$EVAL/evaluate.json"
python -c 'import json, sys; print(json.dumps(dict(a.split("=", 1) for a in sys.argv[1:]), indent=2))' \
  "student=$STUDENT" "epochs=$EPOCHS" "seeds=${SEEDS[*]}" "teacher=$TEACHER" "ens_teachers=${ENS_TEACHERS[*]}" \
  "teacher_epochs=$TEACHER_EPOCHS" "teacher_seed=$TEACHER_SEED" "views=$VIEWS" "mix_gt=$MIX_GT" \
  "temperature=${TEMPERATURE:-generate-labels default}" "warmups=${WARMUPS:-none}" "baselines=$BASELINES" \
  "smoke=$SMOKE" "device=$DEVICE" > "$EVAL/settings.json"
"${HELPER[@]}" report "$MANIFEST" "$EVAL/evaluate.json" "$EVAL/settings.json" "$OUT"
say "done in $(( $(date +%s) - START )) s; table: $OUT/table.md, every number: $OUT/table.json"
