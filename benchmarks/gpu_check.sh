#!/usr/bin/env bash
# Every GPU check of lark_fast on one H100/H200, in one script with one time budget (BUDGET seconds,
# default 540). STEPS picks and orders the groups (default: all, in this order):
#   lm_head    fused LM-head statistics: benchmark (lark-triton, torch-chunked, torch-naive, bare cuBLAS,
#              liger-flce if its wheel is under .whl/) at N=8192 bf16 on SmolLM2 / Qwen2.5-1.5B /
#              Llama-3.2-1B / 4096x131072 shapes, the compiled kernel tests, top-50 mode, config sweep
#   loss       weighted SFT loss: compiled CUDA test, time/memory vs HF's loss at 8k and 32k tokens
#   sketch     gradient sketches: the compiled backward / forward-sketch kernels against the torch paths
#              and their timings at three head shapes (gpu_sketch_check.py), then bench_sketch.py on a
#              Qwen2.5-0.5B-shaped model: forward, + activation backward, + sketches, LESS-style baseline
#   scoring    whole pipeline vs the published approach on a Qwen2.5-0.5B-shaped model, and one
#              32k-token trajectory on a Qwen2.5-7B-shaped model (152k vocabulary: the reference's fp32
#              logits alone are 20 GB) — lark_fast vs reference: who runs out of memory
#   train      lark-fast train under torchrun on one GPU: the Trainer's FSDP2 (--fsdp), DeepSpeed ZeRO-3 and
#              ZeRO-3 + LoRA + gradient checkpointing each take the unsharded command's SGD step
#              (tests/test_train_cli.py -k sharded). Needs peft and deepspeed: the GPU machine has no network, so
#              put their wheels under .whl/ first (pip wheel --no-deps -w .whl peft deepspeed hjson py-cpuinfo
#              msgpack einops ninja; DeepSpeed's test skips when it cannot be imported)
#
#   STEPS="lm_head loss" BUDGET=500 benchmarks/gpu_check.sh [OUT_DIR]     OUT_DIR: $OUT or benchmarks/results/gpu
#
# Everything lands in OUT_DIR: log.txt, pytest.xml, *.csv, *.png. Set LARK_GIT_SHA when the tree has
# no .git (the CSVs record it). Without a CUDA device the same plumbing runs on CPU (interpreter
# tests and tiny benchmarks), which is how this script is tested.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee "$OUT_DIR/log.txt") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export LARK_GIT_SHA=${LARK_GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
start=$SECONDS
BUDGET=${BUDGET:-540}  # seconds for all steps together
STEPS=${STEPS:-lm_head loss sketch scoring train}
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
  for group in $STEPS; do
    case $group in
      lm_head)
        step benchmark 120 $PY benchmarks/bench_lm_head_stats.py --out "$OUT_DIR"
        step tests 160 $PY -m pytest tests/test_lm_head_stats_triton.py -v -rs --durations=10 --junitxml="$OUT_DIR/pytest.xml"
        step benchmark-topk50 45 $PY benchmarks/bench_lm_head_stats.py --topk 50 --shapes 4096x131072 \
          --providers lark-triton torch-chunked --tag gpu_topk50 --out "$OUT_DIR"
        step sweep 90 $PY benchmarks/bench_lm_head_stats.py --sweep --out "$OUT_DIR" ;;
      loss)
        step loss-tests 90 $PY -m pytest -q tests/test_train_loss.py -k cuda -p no:cacheprovider
        step loss-bench 150 $PY benchmarks/bench_weighted_loss.py --device cuda --shape llama3-8b \
          --tokens 8192,32768 --reps 5 && cp benchmarks/results/bench_weighted_loss_cuda.csv "$OUT_DIR/" ;;
      sketch)
        step sketch-kernels 120 $PY benchmarks/gpu_sketch_check.py --out "$OUT_DIR"
        step sketch-bench 150 $PY benchmarks/bench_sketch.py --device cuda --shape qwen2.5-0.5b \
          --input .gpu_assets/pool.jsonl --tokenizer .gpu_assets/tokenizer --k 16 --no-kappa \
          --max-tokens-per-batch 16384 --output bench_sketch_gpu && cp benchmarks/results/bench_sketch_gpu.csv "$OUT_DIR/" ;;
      scoring)
        # the GPU machine has no CHAMP / SmolLM2 packages: benchmarks/gpu_assets.sh puts a pool and the
        # tokenizer under .gpu_assets/ (carry it along)
        step scoring-0.5b 120 $PY benchmarks/bench_scoring.py --device cuda --dtype bfloat16 --workload qwen0.5b \
          --input .gpu_assets/pool.jsonl --tokenizer .gpu_assets/tokenizer --repeats 2 --output bench_scoring_gpu_0.5b.csv
        step scoring-7b-32k 150 $PY benchmarks/bench_scoring.py --device cuda --dtype bfloat16 --workload qwen7b-32k \
          --input .gpu_assets/pool.jsonl --tokenizer .gpu_assets/tokenizer --long 1 --repeats 1 \
          --providers lark_fast,published --output bench_scoring_gpu_7b_32k.csv
        cp benchmarks/results/bench_scoring_gpu_*.csv "$OUT_DIR/" 2>/dev/null ;;
      train)
        # LARK_FAST_BACKEND=auto: the fused loss runs its Triton kernels (the tests' default is the torch path)
        step train-sharded 240 env LARK_FAST_BACKEND=auto $PY -m pytest -q tests/test_train_cli.py -k sharded -rs \
          -p no:cacheprovider ;;
      *) echo "!! unknown step group $group"; failed+=("$group") ;;
    esac
  done
else
  echo "== no CUDA device: dry run on CPU (Triton interpreter, tiny benchmarks)"
  export TRITON_INTERPRET=1
  step tests 300 $PY -m pytest tests/test_lm_head_stats_triton.py -q -rs --junitxml="$OUT_DIR/pytest.xml"
  step benchmark 300 $PY benchmarks/bench_lm_head_stats.py --cpu --n 16 --repeats 1 --tag gpu --out "$OUT_DIR"
  step sketch-kernels 300 $PY benchmarks/gpu_sketch_check.py --cpu --out "$OUT_DIR"
  step scoring 300 $PY benchmarks/bench_scoring.py --workload head --problems 1 --repeats 1 \
    --output "$OUT_DIR/bench_scoring_dryrun.csv"
  step train-sharded 300 $PY -m pytest -q tests/test_train_cli.py -k sharded -rs -p no:cacheprovider
fi

echo "== [$((SECONDS - start)) s] done; failed: ${failed[*]:-none}"
ls -l "$OUT_DIR"
[ ${#failed[@]} -eq 0 ]
