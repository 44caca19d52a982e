#!/usr/bin/env bash
# One command for a CUDA machine (issue 20), from the repository root:
#   1. the Triton kernels' cases (tests/triton/cases_*.py), compiled and run on the GPU against the
#      float64 reference, the CPU path and each other (the same cases CPU CI runs interpreted);
#   2. benchmarks/gpu.py: its own correctness check on CUDA, then the interleaved benchmark.
# Records and logs go to $OUT when it is set (the device tool's folder), else benchmarks/results.
# The python3 on the machine is the one that holds torch and triton; nothing is installed.
set -u
cd "$(dirname "$0")/.."
dest="${OUT:-benchmarks/results}"
mkdir -p "$dest"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
python3 - <<'PY' 2>&1 | tee "$dest/gpu_env.txt"
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
LOGITLAB_TRITON_DEVICE=cuda timeout 240 python3 -m pytest -q -x -p no:cacheprovider --no-header \
    tests/triton/cases_cross_entropy.py tests/triton/cases_linear_cross_entropy.py \
    tests/triton/cases_linear_divergence.py tests/triton/cases_sparse.py tests/triton/cases_vocab_parallel.py 2>&1 | tail -40 | tee "$dest/gpu_cases.txt"
cases=${PIPESTATUS[0]}
timeout 400 python3 benchmarks/gpu.py --out "$dest/gpu.json" "$@" 2>&1 | tail -60 | tee "$dest/gpu_bench.txt"
bench=${PIPESTATUS[0]}
echo "cases exit $cases, benchmark exit $bench"
exit $(( cases != 0 || bench != 0 ))
