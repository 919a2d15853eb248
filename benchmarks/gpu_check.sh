#!/usr/bin/env bash
# Everything GPU-related in one go, for the first machine that has a GPU (issue 16).
# Budget: under 10 minutes on one GPU. Results go to $OUT (default: benchmarks/gpu_results/).
#   bash benchmarks/gpu_check.sh            # from the repository root, with the venv active
# Steps (each bounded by `timeout` so one slow step cannot eat the others' time):
#   1. the device, torch and driver;                       2. tests marked `cuda` (CPU vs CUDA);
#   3. the ResNet-18 / small-ViT end-to-end benchmark;     4. resnet50 at 224 on 256 examples,
#      vit_base on 64, and a BERT-base-sized audit (16 x 128 tokens), wall time and peak memory.
set -u
OUT=${OUT:-benchmarks/gpu_results}
PY=${PYTHON:-python}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} > "$OUT/device.txt" 2>&1
timeout 240 $PY -m pytest -m cuda tests/cli/test_cuda.py -q -p no:cacheprovider \
  > "$OUT/tests_cuda.txt" 2>&1; echo "tests_cuda rc=$?" >> "$OUT/summary.txt"
timeout 120 $PY benchmarks/run.py --device cuda --only end_to_end --repeats 1 \
  --out "$OUT/end_to_end.json" > "$OUT/end_to_end.txt" 2>&1; echo "end_to_end rc=$?" >> "$OUT/summary.txt"
timeout 200 $PY benchmarks/real_sizes.py --device cuda --out "$OUT/real_sizes.json" \
  > "$OUT/real_sizes.txt" 2>&1; echo "real_sizes rc=$?" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
