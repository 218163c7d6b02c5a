#!/usr/bin/env bash
# GPU check, for anyone with an NVIDIA GPU and paddlepaddle-gpu (with TensorRT), e.g. in the image of
# deploy/Dockerfile.gpu or a venv with paddlepaddle-gpu installed. Run from the repository root, with ../shared
# (golden outputs, sample videos, the weight generator) beside it. At most 10 minutes:
#   1. golden fidelity on the GPU: tests/test_golden.py with device gpu (fp32, TF32 off)        ≤ 150 s
#   2. fp16 + TensorRT against fp32: features, probabilities, top-20 overlap (≥ 18/20)         ≤ 120 s
#   3. extractor images/s at batch 64, 128 and 256 (fp16 + TensorRT)                           ≤ 80 s
#   4. `videotag bench` end to end (fp16 + TensorRT, seg_num 300, baseline, cold start)      ≤ 140 s
# Exit 0 when every step passed, 1 when one failed, 2 when this machine cannot run it (no GPU, no CUDA
# build of Paddle, no TensorRT, no ../shared). Preflight ≤ 20 s and the seed-0 weights ≤ 45 s come first; each
# step may take 10 s more to be killed: 20 + 45 + 490 + 40 ≤ 600. Nothing here has run on a GPU yet: see docs/deployment.md.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
OUT=${OUT:-.cache/gpu-check}
CACHE=$OUT/models
[ -x "$PYTHON" ] || PYTHON=python3

refuse() { echo "gpu-check: $*" >&2; exit 2; }

command -v timeout > /dev/null || refuse "needs coreutils timeout"
if [ ! -d "$SHARED/golden" ] || [ ! -d "$SHARED/videos" ]; then
    refuse "needs $SHARED (golden outputs, sample videos) beside the checkout"
fi
timeout 20 "$PYTHON" -m worker.local.gpucheck preflight || exit 2
mkdir -p "$OUT"

failed=0
step() {  # step NAME SECONDS COMMAND...: run it under its time limit, log to $OUT/NAME.log, report
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name (at most ${limit} s)"
    if timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s"
    else
        echo "   FAILED (exit $?) after $((SECONDS - start)) s; last lines of $OUT/$name.log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
        failed=1
    fi
}

WEIGHTS=$(timeout 45 "$PYTHON" -c 'from tests.model_fixtures import generated_weights; print(generated_weights(0, 101))')

VIDEOTAG_TEST_DEVICE=gpu step golden 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_golden.py
step agreement 120 "$PYTHON" -m worker.local.gpucheck agreement --weights "$WEIGHTS" \
    --label-file "$SHARED/label_3396.txt" --videos "$SHARED"/videos/*.mp4 --seg-num 32 --cache-dir "$CACHE"
step throughput 80 "$PYTHON" -m worker.local.gpucheck throughput --weights "$WEIGHTS" \
    --label-file "$SHARED/label_3396.txt" --batches 64 128 256 --seconds 10 --cache-dir "$CACHE"
step bench 140 "$PYTHON" -m worker.cli bench --videos "$SHARED/videos" --repeat 2 --seg-num 300 \
    --device gpu --engine inference --precision fp16 --tensorrt --batch-size 64 --ceiling-seconds 10 \
    --extractor-weights "$WEIGHTS/tsn" --predictor-weights "$WEIGHTS/attention_lstm" \
    --label-file "$SHARED/label_3396.txt" --model-cache-dir "$CACHE" --json "$OUT/bench.json"

echo "== figures"
cat "$OUT/agreement.log" "$OUT/throughput.log" 2>/dev/null | grep -E 'images_per_s|top20_overlap|"ok"' || true
grep -E 'videos/min|pipeline/|cold start|^(baseline|pipeline|ceiling) ' "$OUT/bench.log" 2>/dev/null || true
echo "gpu-check: total $SECONDS s; logs in $OUT"
exit $failed
