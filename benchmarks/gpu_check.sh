#!/usr/bin/env bash
# The CUDA checks, for a session lent a GPU (under 5 minutes on one GPU):
#
#     bash benchmarks/gpu_check.sh
#
# 1. the CUDA tests: every solver on CUDA, compiled (CUDA-graph) sampling equal to eager,
#    compiled bf16 training;
# 2. benchmarks/throughput.py's GPU rows: the digits and 32x32 U-Nets eager vs compiled
#    (CUDA graphs, mode reduce-overhead) vs compiled + bf16, and our loop beside diffusers'
#    and k-diffusion's on the same network, written to
#    benchmarks/results/throughput_cuda.{json,md} (and copied to $OUT when it is set).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
python -m pytest -q -p no:cacheprovider -m cuda tests
python benchmarks/throughput.py --device cuda --quick --repeats 5
cat benchmarks/results/throughput_cuda.md
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/throughput_cuda.json benchmarks/results/throughput_cuda.md "$OUT"/
fi
