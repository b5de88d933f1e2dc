#!/usr/bin/env bash
# The README's main job, end to end on a small default: install, simulate a small Model_III
# set, train, evaluate, export to ONNX, predict the three real released sample images, then
# predict them with the shipped Model_III. CvT by default: on a CPU it trains about 2.2x faster
# than ResNet-18 and ends higher (BENCHMARKS.md, "The main job").
#
# Sizes can be shrunk for tests: QUICKSTART_TRAIN, QUICKSTART_TEST (images per class),
# QUICKSTART_EPOCHS, QUICKSTART_MODEL; QUICKSTART_SKIP_INSTALL=1 reuses an installed venv.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${QUICKSTART_TRAIN:-600}
TEST=${QUICKSTART_TEST:-200}
EPOCHS=${QUICKSTART_EPOCHS:-6}
MODEL=${QUICKSTART_MODEL:-cvt}
export DEEPLENSE_HOME=${DEEPLENSE_HOME:-$PWD/.deeplense}
SAMPLES=${QUICKSTART_SAMPLES:-examples/real_samples}  # the three real released images

if [ "${QUICKSTART_SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e '.[cpu]'
fi
DL=${DEEPLENSE:-.venv/bin/deeplense}
RUN="$DEEPLENSE_HOME/runs/quickstart-$MODEL"
rm -rf "$RUN"

$DL data simulate Model_III --train-per-class "$TRAIN" --test-per-class "$TEST" --seed 1
$DL train --model "$MODEL" --dataset Model_III --epochs "$EPOCHS" --run-dir "$RUN" --no-evaluate
$DL evaluate "$RUN"
$DL export onnx "$RUN" -o "$RUN/model.onnx"
$DL predict "$RUN/model.onnx" "$SAMPLES" -o "$RUN/real_samples.csv"
echo "The same images, by the shipped Model_III (trained on 90,000 images for two hours):"
$DL predict Model_III "$SAMPLES" -o "$RUN/real_samples_shipped.csv"
echo "Done: run directory $RUN"
