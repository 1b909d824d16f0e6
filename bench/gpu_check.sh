#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU measurements of issue #20 ("Feed the GPU") in ONE run, ONE JSON.
#
#   bash bench/gpu_check.sh                    # on the GPU machine: --device cuda, real photos
#   bash bench/gpu_check.sh --device cpu       # tiny settings: runs here in ~1 min
#   options: --out FILE (default bench/results/gpu_check.json), --photos DIR (a folder of photos;
#   default: the repository's 133 real photos, bench/photos/hymenoptera.parquet)
#
# Stages, each under its own time cap (timeout(1)); a stage that fails or runs out of time is
# recorded with the end of its log and the check goes on to the next:
#   decode   bench/gpu_decode.py       Pillow vs decode_jpeg (nvjpeg) img/s on the photos, tuner data
#                                      cache built both ways (img/s) and compared pixel by pixel
#   engine   bench/engine_throughput.py --source cache: a real trial configuration read from the
#                                      cache, bf16 autocast + channels_last, eager and torch.compile,
#                                      batch sizes from tuner diagnose batch-size's probe, engine/plain
#                                      ratio, GPU busy % (NVML), allocator peaks
#   engine_r50                         the same for resnet50 at the default batch (eager): its goal
#                                      is its own (>= 3,000 img/s at 224 px on an H100)
#   packing  bench/gpu_packing.py      N = 1, 2, 4 trial processes on the GPU: aggregate and per-trial
#                                      img/s, memory per process
#   loader   bench/loader_ceiling.py   the trial's data path with no model: ms per image in one
#                                      worker per preset, BatchFinish's ms per batch on the GPU per
#                                      preset, rrc's crops per sample vs batched on the GPU
#                                      (roi_align), and the loader's img/s at 4, 8, cores-2
#                                      workers: what the GPU would wait for
# then bench/gpu_check_report.py writes the card (name, capability, memory), torch / torchvision /
# CUDA versions and every stage's result into ONE JSON; each stage's log is kept beside it
# (<out>_<stage>.log). Caps on CUDA: 65 + 160 + 80 + 125 + 60 = 490 s, the report ~2 s; on an
# H200 the stages took about 50 + 115 + 65 + 120 + 40 s (run's timeout_s 540 leaves room).
#
# What the GPU machine needs: python3 with torch, torchvision, numpy, Pillow, pyarrow, filelock,
# tqdm, PyYAML and rich, and nvidia-ml-py for the busy %; ray, mlflow and optuna are not imported on
# these paths. The photos travel with the repository (bench/photos/hymenoptera.parquet).
#   on the GPU machine:  bash bench/gpu_check.sh --out DIR/gpu_check.json    (~7 minutes on an H200)
set -u -o pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
OUT_FILE=bench/results/gpu_check.json
PHOTOS=packed
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT_FILE=$2; shift 2 ;;
    --photos) PHOTOS=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}  # the GPU image's python3 holds torch; tests pass their own interpreter
export PYTHONUNBUFFERED=1
STARTED=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

PHOTO_ARGS=()
if [ "$PHOTOS" != none ] && [ -d "$PHOTOS" ]; then PHOTO_ARGS=(--photos "$PHOTOS"); fi

if [ "$DEVICE" = cpu ]; then  # tiny: the same code paths, sized for a 2-core test machine
  # One torch thread per process: on a loaded machine (a test suite beside it) torch's spinning
  # intra-op threads slowed the engine stage fifty-fold, past its cap.
  export OMP_NUM_THREADS=1
  DECODE_ARGS=(--device cpu --images 12 --cache-images 24 --cache-size 64 --workers 2 --rounds 2)
  ENGINE_ARGS=(--device cpu --source cache --repeats 2)
  R50_ARGS=(--device cpu --source cache --repeats 1 --arch resnet50 --max-batch 32)
  PACKING_ARGS=(--device cpu)
  LOADER_ARGS=(--device cpu --workers 0 --images 128 --samples 20)
  CAPS=(150 150 150 200 100)  # safety nets only: ~15, 15, 10, 20 and 5 s on an idle 2-core machine
else
  DECODE_ARGS=(--device "$DEVICE")
  ENGINE_ARGS=(--device "$DEVICE" --source cache --repeats 3 --images 8192 --compile both)
  R50_ARGS=(--device "$DEVICE" --source cache --repeats 2 --images 8192 --arch resnet50 --max-batch 256 --compile off)
  PACKING_ARGS=(--device "$DEVICE" --seconds 5)
  LOADER_ARGS=(--device "$DEVICE")
  CAPS=(65 160 80 125 60)
fi

# stage NAME CAP COMMAND...: runs COMMAND under CAP seconds; leaves NAME.status/.log in $WORK.
stage() {
  local name=$1 cap=$2 start rc ms
  shift 2
  echo "== $name (cap ${cap} s): $*"
  start=$(date +%s%N)
  timeout -k 10 "$cap" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  printf '%s\n%d.%03d\n%s\n%s\n' "$rc" $((ms / 1000)) $((ms % 1000)) "$cap" "$*" >"$WORK/$name.status"
  echo "   exit $rc; last lines:"
  tail -n 4 "$WORK/$name.log" | sed 's/^/   | /'
}

# "${A[@]+"${A[@]}"}": an empty array under set -u (bash before 4.4 calls it unbound).
stage decode "${CAPS[0]}" "$PY" bench/gpu_decode.py "${DECODE_ARGS[@]}" ${PHOTO_ARGS[@]+"${PHOTO_ARGS[@]}"} \
  --out "$WORK/decode.json"
stage engine "${CAPS[1]}" "$PY" bench/engine_throughput.py "${ENGINE_ARGS[@]}" ${PHOTO_ARGS[@]+"${PHOTO_ARGS[@]}"} \
  --out "$WORK/engine.json"
stage engine_r50 "${CAPS[2]}" "$PY" bench/engine_throughput.py "${R50_ARGS[@]}" ${PHOTO_ARGS[@]+"${PHOTO_ARGS[@]}"} \
  --out "$WORK/engine_r50.json"
stage packing "${CAPS[3]}" "$PY" bench/gpu_packing.py "${PACKING_ARGS[@]}" --out "$WORK/packing.json"
stage loader "${CAPS[4]}" "$PY" bench/loader_ceiling.py "${LOADER_ARGS[@]}" ${PHOTO_ARGS[@]+"${PHOTO_ARGS[@]}"} \
  --out "$WORK/loader.json"

timeout -k 5 60 "$PY" bench/gpu_check_report.py --device "$DEVICE" --work "$WORK" --out "$OUT_FILE" \
  --started "$STARTED" --command "bash bench/gpu_check.sh --device $DEVICE --photos $PHOTOS"
REPORTED=$?
# The logs name the temporary folder as $WORK: a saved result carries no path of the machine it ran on.
for name in decode engine engine_r50 packing loader; do
  [ -f "$WORK/$name.log" ] && sed "s#$WORK#\$WORK#g" "$WORK/$name.log" >"${OUT_FILE%.json}_$name.log"
done
exit $REPORTED
