#!/bin/bash
# The GPU checks of this repository in one command, most needed first, each under a time cap, so that a
# machine lent for minutes (one H100 or H200 beside a CPU-only workplace) answers what a CPU cannot:
#
#   bash bench/gpu_checks.sh           # tests, then the benchmark: at most 10 minutes
#   bash bench/gpu_checks.sh more      # then CUDA graphs, batch 16, the attention kernels: at most 6 more
#
# 1. tests/test_cuda.py: training in bf16 with workers and resuming, --compile, grad checkpointing, evaluation,
#    recording, rollout and gradient attributions against the CPU (the Captum ones skip where it is missing);
# 2. tslab bench gpu for divided and axial, eager: the default (short groups by the Triton kernel), MATH_BELOW,
#    PACK_TO, PyTorch's kernels alone ("sdpa"), HuggingFace, the host's share, memory at batch 8 against the
#    estimate, and `tslab train` end to end; 3. divided compiled, with the Triton kernel and with PyTorch's
#    (each combination compiles for a minute or more: one command timing them all outran 200 s);
# `more`: 4. divided at batch 16 and axial, compiled with CUDA graphs; 5. tslab bench attention per step.
# It needs torch and transformers alone (no decord, PyAV, Streamlit, plotly). Wheels in .whl/ (Captum, say)
# are installed first into /tmp/site. Everything printed is kept in $OUT (default /tmp/gpu-checks): the logs
# and bench/gpu.py's JSON results, to copy into bench/results/ with the card's name.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
step() {  # step NAME SECONDS COMMAND...: run it under a cap, its output on the screen and in $OUT/NAME.log
    local name=$1 cap=$2
    shift 2
    echo "=== $name: $* (at most $cap s)"
    timeout "$cap" "$@" 2>&1 | grep --line-buffered -v "Writing model shards" | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "=== $name: stopped at its $cap s"
    return 0
}
{ nvidia-smi -L; git log -1 --format='commit %h' 2>/dev/null; echo "$(nproc) CPU cores"
  python3 -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__)'; } 2>&1 | tee "$OUT/info.txt"
# --short-below 16 (the default): no second row; 0: one more, with PyTorch's kernels for every group ("sdpa")
if [ "${1:-}" != more ]; then
    step cuda-tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
    step gpu 150 python3 bench/gpu.py --schemes divided_space_time axial --compile-schemes --memory-batches 8 \
        --json "$OUT/gpu.json"
    step gpu-compiled 240 python3 bench/gpu.py --schemes divided_space_time --compile-schemes divided_space_time \
        --math-below 0 --pack-to 0 --short-below 0 --memory-batches --e2e-steps 0 --json "$OUT/gpu-compiled.json"
else
    step gpu-graphs-b16 120 python3 bench/gpu.py --schemes divided_space_time --batch 16 --compile-schemes \
        divided_space_time --compile-modes reduce-overhead --math-below 0 --pack-to 0 --short-below 16 --memory-batches \
        --e2e-steps 0 --json "$OUT/gpu-graphs-b16.json"
    step gpu-axial-graphs 150 python3 bench/gpu.py --schemes axial --compile-schemes axial --compile-modes \
        reduce-overhead --math-below 0 --pack-to 0 --short-below 16 --memory-batches --e2e-steps 0 \
        --json "$OUT/gpu-axial-graphs.json"
    step attention 80 python3 bench/attention.py --schemes divided_space_time axial --json "$OUT/attention.json"
fi
echo "=== done: $OUT"
