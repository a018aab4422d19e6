#!/usr/bin/env bash
# The GPU figures in one run on one GPU, then one table: stage one (generate-labels, bf16, 50,000 CIFAR-shaped
# images) against bare teacher inference, stage one again at batch 1024 with the teacher in channels_last under
# --compile against its anchor (the same resnet56 over images already on the GPU, eager and in CUDA graphs), stage
# two (resnet20 bf16 epochs: vanilla, from a 162-view store, with an online resnet56 teacher, against the anchor:
# the same student in a plain loop over images already on the GPU, eager and in CUDA graphs), one NCCL DDP process
# (torchrun) training from the same store, stage two again at batch 128 under --compile against the anchor at
# batch 128, and stage one at ImageNet shape (sampled:K rrc-flip views, top-10, resnet18, 1000 classes, over
# generated JPEGs).
#
#   benchmarks/device_check.sh OUT [--dry-run] [--smoke]
#
#   OUT gets generate_labels.json, generate_labels_fast.json, stage_two.json, ddp/ (the torchrun run folder),
#   stage_two_compiled.json, generate_labels_imagenet.json, PART.json for each opt-in part below that ran, logs/,
#   device_check.json and device_check.md (the table). Each part runs under its own time limit, so one that hangs
#   or fails leaves the others' figures; the table names what is missing.
#   --dry-run  print the commands; run none.
#   --smoke    tiny sizes on whatever device there is, fp32, an identity store: checks the plumbing only.
#   --parts A,B,...  run only these parts, in the script's order (names below; default: the six first ones).
#
# Environment (defaults in brackets): GEN_IMAGES [50000] identity images for stage one; CROP_FLIP_IMAGES [5000]
# images x 162 views for stage one's crop-flip part (both stage-one parts use the same); STAGE2_IMAGES [10000]
# images of stage two; STAGE2_VIEWS [cifar-crop-flip] its store's views (162 per image, so 162 x STAGE2_IMAGES
# teacher passes first); EPOCHS [4] student epochs per setup (epoch 1 holds numba's compile and is not timed); the
# compiled part uses the same images, views and epochs; IMAGENET [1] runs the ImageNet-shaped part (0 skips it);
# IMAGENET_IMAGES [2000] generated JPEGs x IMAGENET_VIEWS [8] views in IMAGENET_CLASSES [1000] classes; PART_LIMIT
# [240] seconds per part; GEN_FAST_LIMIT [2 x PART_LIMIT] seconds for generate_labels_fast (it compiles the
# teacher in each of its four generate-labels runs and in its captured anchors); LIMIT_<part> seconds for that part
# [PART_LIMIT]; GEN_FAST_COMPILE [1] (0: generate_labels_fast runs the teacher eager); PACK [8] students in the
# pack of the stage-two parts at batch 128; PACKED_COMPILE [0] (1: packed.py --compile); PACKED_MEMBERS [1,2,4,8,16]
# packed.py's pack sizes; PYTHON [python].
#
# The six parts, in order: benchmarks/generate_labels.py --no-anchor (generate_labels); benchmarks/generate_labels.py
# --batch-size 1024 --channels-last --compile with its anchor at batch 1024, the goal's setup: generate-labels
# identity and cifar-crop-flip at least 0.7x the eager anchor (generate_labels_fast; --smoke: batch 64);
# benchmarks/stage_two.py at batch 64, eager, with its anchor at batch 64 (stage_two); `labelopt train-student`
# under torchrun (ddp); benchmarks/stage_two.py --batch-size 128 --compile --mix none, the goal's batch, with its
# anchor at batch 128, vanilla, the store, the store with its batches replayed from the device (no loader on the
# step's path) and a pack of PACK students from it (stage_two_compiled);
# benchmarks/generate_labels_imagenet.py. Four more, only when --parts names them: stage_two.py at batch 128, eager,
# vanilla, store and the pack, with its anchor (stage_two_128), benchmarks/packed.py (packed: G = 1..16 students
# packed against one after another, images in memory; eager), benchmarks/store_finish.py over CROP_FLIP_IMAGES
# images x 162 views (store_finish: the gzip store's assembly on the machine's cores, CPU only), and
# benchmarks/stage_one_overhead.py over GEN_IMAGES identity images (stage_one_overhead: generate-labels with a
# teacher that costs nothing, at blocks of 256 and at the default block). Sized for under 8 minutes on one
# H100/H200 before the anchors and the compiled parts were added; not yet measured with them (each part still
# stops at its limit).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

OUT="" DRY=0 SMOKE=0
ALL_PARTS=generate_labels,generate_labels_fast,stage_two,ddp,stage_two_compiled,generate_labels_imagenet
KNOWN_PARTS=$ALL_PARTS,stage_two_128,packed,store_finish,stage_one_overhead
PARTS=$ALL_PARTS
while [ $# -gt 0 ]; do
  case "$1" in
    --parts) [ $# -ge 2 ] || { echo "--parts needs a list, e.g. stage_two_compiled,packed" >&2; exit 2; }
      PARTS=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) [ -z "$OUT" ] || { echo "one OUT folder only (got $OUT and $1)" >&2; usage; }; OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "OUT is required" >&2; usage; }

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
PART_LIMIT=${PART_LIMIT:-240}
if [ "$SMOKE" = 1 ]; then
  GEN_IMAGES=${GEN_IMAGES:-128} CROP_FLIP_IMAGES=${CROP_FLIP_IMAGES:-2} STAGE2_IMAGES=${STAGE2_IMAGES:-128}
  GEN_FAST_BATCH=64
  STAGE2_VIEWS=${STAGE2_VIEWS:-identity} EPOCHS=${EPOCHS:-2} PRECISION=() DEVICE=auto
  IMAGENET_IMAGES=${IMAGENET_IMAGES:-8} IMAGENET_VIEWS=${IMAGENET_VIEWS:-2} IMAGENET_CLASSES=${IMAGENET_CLASSES:-4}
  IMAGENET_SIZES=(--topk 2 --long-side 64 --batch-size 8 --repeats 1)
  PACK=${PACK:-2} PACKED_SIZES=(--members 1,2 --steps 2 --batch-size 8)
else
  GEN_IMAGES=${GEN_IMAGES:-50000} CROP_FLIP_IMAGES=${CROP_FLIP_IMAGES:-5000} STAGE2_IMAGES=${STAGE2_IMAGES:-10000}
  GEN_FAST_BATCH=1024
  STAGE2_VIEWS=${STAGE2_VIEWS:-cifar-crop-flip} EPOCHS=${EPOCHS:-4} PRECISION=(--bf16) DEVICE=cuda
  IMAGENET_IMAGES=${IMAGENET_IMAGES:-2000} IMAGENET_VIEWS=${IMAGENET_VIEWS:-8} IMAGENET_CLASSES=${IMAGENET_CLASSES:-1000}
  IMAGENET_SIZES=() PACKED_SIZES=()
fi
IMAGENET=${IMAGENET:-1}
[[ $IMAGENET =~ ^[01]$ ]] || { echo "IMAGENET must be 0 or 1 (got '$IMAGENET')" >&2; exit 2; }
for name in GEN_IMAGES CROP_FLIP_IMAGES STAGE2_IMAGES EPOCHS PART_LIMIT IMAGENET_IMAGES IMAGENET_VIEWS IMAGENET_CLASSES; do
  [[ ${!name} =~ ^[1-9][0-9]*$ ]] || { echo "$name must be a positive integer (got '${!name}')" >&2; exit 2; }
done
for name in ${PARTS//,/ }; do
  [[ ",$KNOWN_PARTS," == *",$name,"* ]] || { echo "unknown part '$name'; known: $KNOWN_PARTS" >&2; exit 2; }
done
PACK=${PACK:-8}
[[ $PACK =~ ^[1-9][0-9]*$ ]] || { echo "PACK must be a positive integer (got '$PACK')" >&2; exit 2; }
GEN_FAST_LIMIT=${GEN_FAST_LIMIT:-$((2 * PART_LIMIT))}
[[ ${GEN_FAST_COMPILE:-1} =~ ^[01]$ ]] || { echo "GEN_FAST_COMPILE must be 0 or 1 (got '$GEN_FAST_COMPILE')" >&2; exit 2; }
if [ "${GEN_FAST_COMPILE:-1}" = 1 ]; then GEN_FAST_COMPILE=(--compile); else GEN_FAST_COMPILE=(); fi
[[ ${PACKED_COMPILE:-0} =~ ^[01]$ ]] || { echo "PACKED_COMPILE must be 0 or 1 (got '$PACKED_COMPILE')" >&2; exit 2; }
if [ "${PACKED_COMPILE:-0}" = 1 ]; then PACKED_SIZES+=(--compile); fi
[ -z "${PACKED_MEMBERS:-}" ] || PACKED_SIZES+=(--members "$PACKED_MEMBERS")
[[ $GEN_FAST_LIMIT =~ ^[1-9][0-9]*$ ]] ||
  { echo "GEN_FAST_LIMIT must be a positive integer (got '$GEN_FAST_LIMIT')" >&2; exit 2; }
[ "$EPOCHS" -ge 2 ] || { echo "EPOCHS must be at least 2: epoch 1 holds numba's compile and is not timed" >&2; exit 2; }

# One part: its command under its time limit (PART_LIMIT; GEN_FAST_LIMIT for generate_labels_fast), stdout to a
# file, stderr to its log. A failed part is recorded and the next one runs.
part() {
  local name=$1 stdout=$2; shift 2
  [[ ",$PARTS," == *",$name,"* ]] || return 0
  if [ "$DRY" = 1 ]; then echo "$*"; return 0; fi
  echo "device_check: $name ($(date +%T))" >&2
  local started=$SECONDS limit=$PART_LIMIT limit_name="LIMIT_$name"
  [ "$name" != generate_labels_fast ] || limit=$GEN_FAST_LIMIT
  limit=${!limit_name:-$limit}
  [[ $limit =~ ^[1-9][0-9]*$ ]] || { echo "$limit_name must be a positive integer (got '$limit')" >&2; exit 2; }
  if timeout "$limit" "$@" > "$stdout" 2> "$OUT/logs/$name.log"; then
    echo "$name ok $((SECONDS - started))" >> "$OUT/logs/parts.txt"
  else
    local rc=$?
    echo "$name failed:$rc $((SECONDS - started))" >> "$OUT/logs/parts.txt"
    echo "device_check: $name failed (exit $rc), see $OUT/logs/$name.log" >&2
    tail -5 "$OUT/logs/$name.log" >&2 || true
  fi
}

if [ "$DRY" = 0 ]; then
  [ ! -e "$OUT" ] || [ -z "$(ls -A "$OUT")" ] || { echo "OUT $OUT is not empty; pass a new folder" >&2; exit 2; }
  mkdir -p "$OUT/logs"
  : > "$OUT/logs/parts.txt"
  "$PYTHON" -c "import torch; print('device_check: torch', torch.__version__, 'cuda', torch.cuda.is_available())" >&2
fi

# Stage one as it was sized (eager, batch 512, no anchor), then the goal's setup against its anchor: the teacher in
# channels_last under --compile (CUDA graphs) at batch 1024, over the same images.
part generate_labels "$OUT/generate_labels.json" \
  "$PYTHON" "$HERE/generate_labels.py" --device "$DEVICE" "${PRECISION[@]}" --teacher-arch resnet56 \
  --images "$GEN_IMAGES" --crop-flip-images "$CROP_FLIP_IMAGES" --no-anchor --json-only
part generate_labels_fast "$OUT/generate_labels_fast.json" \
  "$PYTHON" "$HERE/generate_labels.py" --device "$DEVICE" "${PRECISION[@]}" --teacher-arch resnet56 \
  --images "$GEN_IMAGES" --crop-flip-images "$CROP_FLIP_IMAGES" --batch-size "$GEN_FAST_BATCH" --channels-last \
  "${GEN_FAST_COMPILE[@]}" --json-only
part stage_two "$OUT/stage_two.json" \
  "$PYTHON" "$HERE/stage_two.py" --device "$DEVICE" "${PRECISION[@]}" --images "$STAGE2_IMAGES" \
  --views "$STAGE2_VIEWS" --epochs "$EPOCHS" --keep "$OUT/stage_two" --json-only
# The DDP part trains from stage two's store and data with stage two's settings, so its epochs compare with the
# store row (one process: what DDP's wrapping and NCCL's all-reduce cost on top).
STORE="$OUT/stage_two/labels/sl-resnet56-t4.h5"
part ddp "$OUT/logs/ddp.stdout" \
  "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 -m labelopt train-student \
  --student resnet20 --method sl --labels "$STORE" --data "$OUT/stage_two/bench" --epochs "$EPOCHS" \
  --batch-size 64 --seed 0 --device "$DEVICE" "${PRECISION[@]}" --out "$OUT/ddp"
# The goal's batch under --compile (CUDA graphs), against the anchor at the same batch: the project's captured step
# beside the captured in-memory loop.
part stage_two_compiled "$OUT/stage_two_compiled.json" \
  "$PYTHON" "$HERE/stage_two.py" --device "$DEVICE" "${PRECISION[@]}" --images "$STAGE2_IMAGES" \
  --views "$STAGE2_VIEWS" --epochs "$EPOCHS" --batch-size 128 --compile --setups vanilla,store,store_replayed \
  --pack "$PACK" \
  --json-only
# The same at batch 128 eager: what --compile adds, and the pack's gain without it.
part stage_two_128 "$OUT/stage_two_128.json" \
  "$PYTHON" "$HERE/stage_two.py" --device "$DEVICE" "${PRECISION[@]}" --images "$STAGE2_IMAGES" \
  --views "$STAGE2_VIEWS" --epochs "$EPOCHS" --batch-size 128 --setups vanilla,store --pack "$PACK" --json-only
part packed "$OUT/packed.json" \
  "$PYTHON" "$HERE/packed.py" --device "$DEVICE" "${PRECISION[@]}" "${PACKED_SIZES[@]}" --json-only
part store_finish "$OUT/store_finish.json" \
  "$PYTHON" "$HERE/store_finish.py" --samples "$CROP_FLIP_IMAGES" --json-only
part stage_one_overhead "$OUT/stage_one_overhead.json" \
  "$PYTHON" "$HERE/stage_one_overhead.py" --device "$DEVICE" --images "$GEN_IMAGES" --json-only
if [ "$IMAGENET" = 1 ]; then
  part generate_labels_imagenet "$OUT/generate_labels_imagenet.json" \
    "$PYTHON" "$HERE/generate_labels_imagenet.py" --device "$DEVICE" "${PRECISION[@]}" --images "$IMAGENET_IMAGES" \
    --views-per-image "$IMAGENET_VIEWS" --classes "$IMAGENET_CLASSES" "${IMAGENET_SIZES[@]}" --json-only
fi

if [ "$DRY" = 0 ]; then
  "$PYTHON" "$HERE/device_check_report.py" "$OUT"
fi
