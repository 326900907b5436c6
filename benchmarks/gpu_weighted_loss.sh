#!/usr/bin/env bash
# The weighted loss on one CUDA GPU: correctness and determinism of the compiled Triton path (bf16, a
# real head), then time and memory against HF's default loss at 8k and 32k tokens. About 5 minutes on
# an H100; writes benchmarks/results/bench_weighted_loss_cuda.csv. Needs: pip install -e ".[test,gpu]".
set -euo pipefail
cd "$(dirname "$0")/.."
TRITON_INTERPRET=0 python -m pytest -q tests/test_train_loss.py -k cuda -p no:cacheprovider
python benchmarks/bench_weighted_loss.py --device cuda --shape llama3-8b --tokens 8192,32768 --reps 5
cp benchmarks/results/bench_weighted_loss_cuda.csv benchmarks/results/bench_weighted_loss_cuda_llama3-8b.csv
python benchmarks/bench_weighted_loss.py --device cuda --shape qwen2.5-7b --tokens 8192,32768 --reps 5
