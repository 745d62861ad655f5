#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, the folder benchmarks/device_check.sh needs on a GPU machine that
# reaches no package registry (an image with CUDA PyTorch, Lightning, torchmetrics, scikit-image and OpenCV, but
# without Hydra, OmegaConf, openpyxl, dlib or dlib's 100 MB face model, which generation and preprocessing need):
#   wheels/     the pure-Python packages such an image lacks, at the versions installed here (device_check.sh
#               installs them there with pip --no-index where they are missing);
#   cache/      the preprocessed cache of the default synthetic corpus, built here, without the corpus itself
#               and without the per-clip files (only what training reads: about 56 MB);
#   root_path   the MER_ROOT the cache was built under. The cache key records the corpus's absolute path, so the
#               cache is built under a fixed path and device_check.sh puts it back under the same one; without
#               the corpus there, training uses the cache as built (mer.preprocess.inputs.check_cache).
# The learned-stages benchmark runs on seeded random weights there (the published RIFE file would not fit the
# 64 MiB a call carries; the cost of a network call does not depend on its weights' values).
# Written to a temporary folder and renamed, so an interrupted run leaves no half bundle.
#
#   bash benchmarks/device_bundle.sh [DIR]    (default DIR: .device, ignored by git; PYTHON=... picks the interpreter)
# then, on the GPU machine, with DIR carried beside the checkout:  bash benchmarks/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
OUT=${1:-.device}
ROOT=/tmp/mer-device-bundle-root   # a scratch folder of this script's own, emptied before and after
TMP="$OUT.partial.$$"
trap 'rm -rf "$TMP" "$ROOT"' EXIT
rm -rf "$TMP" "$ROOT" && mkdir -p "$TMP/wheels"

# What train.py and the benchmarks import beyond such an image. `pip wheel` takes the published wheel, or builds
# one from the source release where none is published (antlr4-python3-runtime 4.9.3): all are pure Python, so
# they install on whichever Python 3 is there.
for name in hydra-core omegaconf antlr4-python3-runtime openpyxl et-xmlfile; do
  version=$("$PY" -c 'import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))' "$name")
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$TMP/wheels" "$name==$version"
done

MER_ROOT="$ROOT" "$PY" preprocess.py > "$TMP/preprocess.log" 2>&1 || { tail -20 "$TMP/preprocess.log"; exit 1; }
rm "$TMP/preprocess.log"
cp -r "$ROOT/cache" "$TMP/"
# clips/ holds one result per clip, for resuming an interrupted preprocessing: training never reads it.
rm -rf "$TMP"/cache/*/*/clips
echo "$ROOT" > "$TMP/root_path"

rm -rf "$OUT" && mv "$TMP" "$OUT"
echo "device bundle: $OUT ($(du -sh "$OUT" | cut -f1)): $(ls "$OUT/wheels" | tr '\n' ' ')"
