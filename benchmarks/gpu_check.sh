#!/usr/bin/env bash
# GPU check of the fused LM-head statistics kernel on one H100/H200, hard-capped at 8 minutes:
#   1. benchmark: lark-triton, torch-chunked, torch-naive (+ liger-flce if importable), N=8192 bf16,
#      SmolLM2 / Qwen2.5-1.5B / Llama-3.2-1B / 4096x131072 shapes, time + peak extra memory
#   2. the kernel tests compiled on CUDA (bf16 real shapes, int64 offsets, determinism included)
#   3. benchmark of the top-K compatibility mode (topk=50) at 4096x131072
#   4. launch-config sweep of the fused kernel at 4096x131072
#
#   benchmarks/gpu_check.sh [OUT_DIR]      OUT_DIR defaults to $OUT, else benchmarks/results/gpu
#
# Everything lands in OUT_DIR (7 files): log.txt, pytest.xml, lm_head_stats_gpu.{csv,png},
# lm_head_stats_gpu_topk50.{csv,png}, lm_head_stats_sweep.csv. Set LARK_GIT_SHA when the tree has no
# .git (the CSVs record it). Wheels under .whl/ (e.g. liger-kernel) are installed first when present.
# Without a CUDA device the same plumbing runs on CPU: interpreter tests and a tiny --cpu benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/log.txt") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export LARK_GIT_SHA=${LARK_GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
start=$SECONDS
BUDGET=${BUDGET:-470}  # seconds for all steps together
failed=()
step() {  # step NAME TIMEOUT_S CMD...: runs CMD within min(TIMEOUT_S, what is left of BUDGET), records failures
  local name=$1 limit=$2 left=$((BUDGET - (SECONDS - start)))
  shift 2
  ((left < limit)) && limit=$left
  if ((limit < 10)); then echo "!! $name: skipped, out of time"; failed+=("$name"); return; fi
  echo "== [$((SECONDS - start)) s] $name (limit $limit s)"
  timeout "$limit" "$@" || { echo "!! $name: exit $?"; failed+=("$name"); }
}

echo "== lark_fast gpu_check, git $LARK_GIT_SHA, $(date -Is)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import lark_fast._C" 2>/dev/null; then
  step install 90 $PY -m pip install -q --no-deps --no-build-isolation -e .
fi
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"

if $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  export TRITON_INTERPRET=0
  step benchmark 120 $PY benchmarks/bench_lm_head_stats.py --out "$OUT_DIR"
  step tests 160 $PY -m pytest tests/test_lm_head_stats_triton.py -v -rs --durations=10 --junitxml="$OUT_DIR/pytest.xml"
  step benchmark-topk50 45 $PY benchmarks/bench_lm_head_stats.py --topk 50 --shapes 4096x131072 \
    --providers lark-triton torch-chunked --tag gpu_topk50 --out "$OUT_DIR"
  step sweep 90 $PY benchmarks/bench_lm_head_stats.py --sweep --out "$OUT_DIR"
else
  echo "== no CUDA device: dry run on CPU (Triton interpreter, tiny benchmark)"
  export TRITON_INTERPRET=1
  step tests 300 $PY -m pytest tests/test_lm_head_stats_triton.py -q -rs --junitxml="$OUT_DIR/pytest.xml"
  step benchmark 300 $PY benchmarks/bench_lm_head_stats.py --cpu --n 16 --repeats 1 --tag gpu --out "$OUT_DIR"
fi

echo "== [$((SECONDS - start)) s] done; failed: ${failed[*]:-none}"
ls -l "$OUT_DIR"
[ ${#failed[@]} -eq 0 ]
