#!/usr/bin/env bash
# One check of mer's speed on this machine's accelerator, under 5 minutes, printed as a table:
#   1. the training step (N = 12, batch 32): samples/s of mer (paths folded into the batch) and of the
#      path-loop schedule (the published code's), on the device;
#   2. the default LOSO (synthetic corpus, 10 folds, 25 epochs), fold-parallel, wall time of `train.py`
#      with the cache already built (generation and preprocessing are timed apart, on the CPU);
#   3. the learned preprocessing (RIFE + MagNet) of one clip (N = 12, 10 alphas, 256 crop), one call at a
#      time vs batched with only the frames looked at decoded.
# Without a GPU it runs the same steps on the CPU, says so, and shortens step 2 to LOSO_EPOCHS_CPU epochs
# (default 2) so that it stays short; nothing it prints is a GPU figure unless the device column says cuda.
#
# On a GPU machine that reaches no package registry, carry the folder benchmarks/device_bundle.sh makes (.device,
# or DEVICE_BUNDLE=DIR): the script installs its wheels where Hydra or OmegaConf are missing and trains on its
# cache instead of generating and preprocessing the corpus (which needs dlib there).
#
#   bash benchmarks/device_check.sh            (from the repository root; PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
BUNDLE=${DEVICE_BUNDLE:-.device}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mer-device-check.XXXXXX")
BUNDLE_ROOT=
trap 'rm -rf "$WORK" ${BUNDLE_ROOT:+"$BUNDLE_ROOT"}' EXIT

if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if [ ! -d "$BUNDLE/wheels" ]; then
    echo "Hydra/OmegaConf are not installed for $PY and there is no $BUNDLE/wheels: run benchmarks/device_bundle.sh" \
      "where PyPI is reachable and carry $BUNDLE, or install requirements.txt" >&2
    exit 1
  fi
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$WORK/site" "$BUNDLE"/wheels/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi

DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$DEVICE" = cuda ]; then
  NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
  EPOCHS=25
  STEPS=(--steps 10 --repeats 3)
else
  NAME="no GPU present: CPU ($(nproc) cores)"
  EPOCHS=${LOSO_EPOCHS_CPU:-2}
  STEPS=(--steps 3 --repeats 2)   # the path loop takes seconds per step on 2 shared cores
fi
echo "device check: $NAME; torch $("$PY" -c 'import torch; print(torch.__version__)'); load $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. Training step.
"$PY" benchmarks/train_step.py --frames 12 --batch 32 --compare --device "$DEVICE" "${STEPS[@]}" \
  | tee "$WORK/step.txt"
STEP_MER=$(awk '$1 == "batched:" {print $4}' "$WORK/step.txt")
STEP_LOOP=$(awk '$1 == "path" && $2 == "loop:" {print $5}' "$WORK/step.txt")
STEP_RATIO=$(awk '/batched \/ path loop/ {print $NF}' "$WORK/step.txt")

# 2. Default LOSO, fold-parallel; the corpus and the cache first (on the CPU), timed apart, or the bundle's cache.
COMMON=(trainer.accelerator=auto "trainer.max_epochs=$EPOCHS" logger=none "hydra.run.dir=$WORK/run")
if [ -d "$BUNDLE/cache" ] && [ -f "$BUNDLE/root_path" ]; then
  BUNDLE_ROOT=$(cat "$BUNDLE/root_path")   # where the cache was built: its key records that path
  rm -rf "$BUNDLE_ROOT" && mkdir -p "$BUNDLE_ROOT" && cp -r "$BUNDLE/cache" "$BUNDLE_ROOT/"
  export MER_ROOT="$BUNDLE_ROOT"
  PREP="built elsewhere (benchmarks/device_bundle.sh)"
else
  export MER_ROOT="$WORK/root"
  START=$(date +%s%N)
  "$PY" preprocess.py preprocess.workers="$(nproc)" > "$WORK/preprocess.txt" 2>&1 || { tail -20 "$WORK/preprocess.txt"; exit 1; }
  PREP_MS=$(( ($(date +%s%N) - START) / 1000000 ))
  PREP="$((PREP_MS / 1000)).$(( PREP_MS % 1000 / 100 ))"
fi
START=$(date +%s%N)
"$PY" train.py trainer.fold_parallel=true "${COMMON[@]}" > "$WORK/train.txt" 2>&1 || { tail -20 "$WORK/train.txt"; exit 1; }
LOSO_MS=$(( ($(date +%s%N) - START) / 1000000 ))
UF1=$(awk '/pooled \(MEGC\)/ {print $3}' "$WORK/train.txt" | tail -1)

# 3. Learned preprocessing of one clip.
"$PY" benchmarks/learned_stages.py --device "$DEVICE" --repeats 1 | tee "$WORK/learned.txt"
ONE_CALL=$(awk '/one call at a time:/ {print $(NF-6)}' "$WORK/learned.txt")
LOOKED=$(awk '/frames looked at:/ && /total/ {print $(NF-6)}' "$WORK/learned.txt")
LOOKED_X=$(awk '/frames looked at:/ && /total/ {print $(NF-3)}' "$WORK/learned.txt")

echo
echo "| what ($NAME) | figure |"
echo "|---|---|"
echo "| training step, mer (batched), samples/s | $STEP_MER |"
echo "| training step, path loop, samples/s | $STEP_LOOP |"
echo "| mer / path loop | $STEP_RATIO |"
echo "| corpus generation + preprocessing (CPU, $(nproc) workers), s | $PREP |"
echo "| LOSO fold-parallel, $EPOCHS epochs, 10 folds (train.py wall), s | $((LOSO_MS / 1000)).$(( LOSO_MS % 1000 / 100 )) (pooled UF1 $UF1) |"
echo "| RIFE + MagNet per clip, one call at a time, s | $ONE_CALL |"
echo "| RIFE + MagNet per clip, batched, frames looked at, s | $LOOKED ($LOOKED_X) |"
