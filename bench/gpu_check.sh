#!/usr/bin/env bash
# The prepared GPU check (issue 18): run on a machine with a CUDA GPU, from the repository root.
#   bash bench/gpu_check.sh            # installs the extra if torch is missing, then tests and benchmarks
# 1. the comparison suite on cuda (the torch engine against numpy, every streamed analysis),
# 2. the benchmark as ratios to the device's float32 GEMM bound, written to bench/RESULTS_gpu.md.
# Copies bench/RESULTS_gpu.md to $OUT when that is set (the device tool's output folder).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
$PY -c 'import torch' 2>/dev/null || $PY -m pip install -q -e '.[gpu]'
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name(0))'
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv || true
TCLI_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider tests/test_device.py 2>&1 | tee /tmp/gpu_tests.log
$PY bench/gpu_bench.py --device cuda --markdown bench/RESULTS_gpu.md
if [ -n "${OUT:-}" ]; then cp bench/RESULTS_gpu.md /tmp/gpu_tests.log "$OUT"/; fi
