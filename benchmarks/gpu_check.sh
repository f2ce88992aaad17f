#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU that reaches no package registry (the device tool's):
# installs the wheels of `make gpu-bundle` offline, then runs the CUDA tests and the GPU
# benchmarks, each within its own time limit (7.5 minutes in all, at most), and writes their logs and
# results to $OUT (the device tool's output folder; default output/gpu_check). Run from the
# repository root, with gpu_bundle/ beside it:
#     bash benchmarks/gpu_check.sh
# Every step runs even if one before it failed; summary.txt lists each step's exit status, and
# environment.txt the GPU, Python, PyTorch and Triton it ran on.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-output/gpu_check}
BUNDLE=${GPU_BUNDLE:-gpu_bundle}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/results"
SITE=$(mktemp -d)/site

step() {  # step NAME SECONDS COMMAND...: run it, log it, record its status
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 5 "$OUT/$name.log"
}

: > "$OUT/summary.txt"
step install 60 "$PYTHON" -m pip install --no-index --no-deps --target "$SITE" "$BUNDLE"/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" -c "import sys, torch, torchvision, triton; print('Python', sys.version.split()[0]); print('torch', torch.__version__, 'CUDA', torch.version.cuda); print('torchvision', torchvision.__version__); print('triton', triton.__version__); print('GPU', torch.cuda.get_device_name(0))"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
step check 30 "$PYTHON" -m mask_rcnn_ext.check
step tests 180 "$PYTHON" -m pytest -p no:cacheprovider -q -rs --junitxml="$OUT/tests.xml" \
    tests/test_cuda.py tests/test_poolers.py tests/test_roi_ops.py tests/test_triton_kernels.py \
    -k "not export_forms"  # the export forms run on CPU, and need onnx
step roi_align 60 "$PYTHON" -m benchmarks.roi_align --device cuda \
    --output "$OUT/results/roi_align.json"
step train_step 60 "$PYTHON" -m benchmarks.train_step --device cuda \
    --output "$OUT/results/train_step.json"
step inference 60 "$PYTHON" -m benchmarks.inference --device cuda \
    --output "$OUT/results/inference.json"
