#!/usr/bin/env bash
# One GPU check (about 3-6 minutes on one GPU): step time and peak memory of freeze / full / SVF /
# SVF + checkpointing at 473 px 1- and 5-shot and 641 px 5-shot in fp32 and bf16, and eval episodes/s.
# First the numerical tests that have CUDA cases (the float32 / TF32 / bf16 tolerance bounds, the
# device-side non-finite guard), then the benchmark.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR   (writes OUT_DIR/gpu_tests.txt, gpu_check.md and gpu_check.json)
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
mkdir -p "$out"
(cd "$here/.." && timeout 120 "$python" -m pytest -q -p no:cacheprovider tests/svf/test_tolerances.py \
    tests/lightning/test_nonfinite.py 2>&1 | tee "$out/gpu_tests.txt")
timeout 480 "$python" "$here/bench_gpu.py" --out "$out" --device cuda
