"""Scoring throughput and peak memory: lark_fast's packed pipeline against the published approach.

Measured side by side in one run on the same model and pool:
  lark_fast        lark_fast.score (packed rows, segment-wise attention, fused statistics)
  bare_forward     the same packed rows, forward to the LM head's input only (no statistics)
  forward_matmul   bare_forward + the LM-head matmul on the scored positions (chunked, discarded)
  reference        the published approach: one trajectory per forward, full fp32 logits for every
                   position, log-softmax nll and the top-50 renormalised Brier
Ratios: lark_fast / bare_forward (the statistics' cost) and reference / lark_fast (speed-up).

    python benchmarks/bench_scoring.py                                  # SmolLM2 + CHAMP on CPU
    python benchmarks/bench_scoring.py --device cuda --shape qwen2.5-0.5b --problems 48
    python benchmarks/bench_scoring.py --device cuda --shape qwen2.5-7b --synthetic 32768 --methods lark_fast,reference

``--shape`` builds a randomly initialised model of that architecture from its config (no download);
``--synthetic T`` scores one T-token trajectory instead of the CHAMP pool.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, PeakMemory, add_model_args, build_model, load_records, machine, sync,  # noqa: E402
                    write_csv)

import lark_fast  # noqa: E402
import lark_fast.models  # noqa: E402
from lark_fast import attention  # noqa: E402
from lark_fast.published import reference_pass  # noqa: E402
from lark_fast.chat import ChatTokenizer  # noqa: E402
from lark_fast.packing import pack_ffd, packed_row  # noqa: E402
from lark_fast.head import LMHead, hidden_before_head  # noqa: E402

def workload(args, tokenizer, vocab):
    """Token ids and first scored index of every trajectory, and the pool records (None if synthetic)."""
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        return [(torch.randint(0, vocab, (args.synthetic,), generator=g).tolist(), 64)], None
    recs = load_records(args)
    ct = ChatTokenizer(tokenizer, max_length=args.max_length)
    toks = [ct(r["messages"]) for r in recs]
    return [(t.input_ids, t.start) for t in toks if t.status == "ok"], recs



def run_lark(model, tokenizer, recs, seqs, args):
    if recs is None:  # synthetic: drive the same op path directly
        return run_forward(model, seqs, args, stats=True)
    lark_fast.score(model, tokenizer, recs, max_length=args.max_length, max_tokens_per_batch=args.max_tokens_per_batch,
                    progress=False)


def run_forward(model, seqs, args, stats=False, matmul=False):
    head = LMHead.from_model(model)
    rows = pack_ffd([len(s) for s, _ in seqs], args.max_tokens_per_batch)
    with torch.inference_mode():
        for row in rows:
            items = [seqs[i] for i in row]
            ids, pos, cu = packed_row([s for s, _ in items], args.device)
            with attention.packed_attention(model), attention.segments(cu.tolist()):
                hidden = hidden_before_head(model, head, ids, position_ids=pos)[0]
            idx = torch.cat([torch.arange(a + st - 1, a + len(s) - 1) for (s, st), a in zip(items, cu[:-1].tolist())])
            idx = idx.to(args.device)
            if stats:
                head.stats(hidden[idx], ids[0, idx + 1], topk=50)
            elif matmul:
                h = hidden[idx]
                for v0 in range(0, head.weight.shape[0], 8192):
                    torch.logsumexp((h @ head.weight[v0:v0 + 8192].T).float(), dim=1)
    sync(args.device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, problems=6)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-tokens-per-batch", type=int, default=8192)
    p.add_argument("--synthetic", type=int, default=None)
    p.add_argument("--methods", default="lark_fast,bare_forward,forward_matmul,reference")
    p.add_argument("--output", default="bench_scoring.csv")
    args = p.parse_args()

    model, tokenizer = build_model(args, tokenizer=not args.synthetic)
    seqs, recs = workload(args, tokenizer, model.get_output_embeddings().weight.shape[0])
    n_scored = sum(len(s) - st for s, st in seqs)
    n_forward = sum(len(s) for s, _ in seqs)
    methods = {
        "lark_fast": lambda: run_lark(model, tokenizer, recs, seqs, args),
        "bare_forward": lambda: run_forward(model, seqs, args),
        "forward_matmul": lambda: run_forward(model, seqs, args, matmul=True),
        "reference": lambda: reference_pass(model, seqs),
    }
    wanted = args.methods.split(",")
    run_forward(model, seqs[:1], args)  # warm-up (kernels, allocator)
    rows = []
    for name in wanted:
        try:
            with PeakMemory(args.device) as mem:
                t0 = time.perf_counter()
                methods[name]()
                secs = time.perf_counter() - t0
            rows.append({"method": name, "seconds": round(secs, 3), "scored_tokens": n_scored,
                         "forward_tokens": n_forward, "tokens_per_s": round(n_scored / secs, 1),
                         "peak_mem_mb": round(mem.mb, 1), "status": "ok"})
        except torch.OutOfMemoryError as e:
            rows.append({"method": name, "status": f"out of memory: {str(e).splitlines()[0][:120]}"})
            torch.cuda.empty_cache()
        print(rows[-1], flush=True)
    by = {r["method"]: r for r in rows if r["status"] == "ok"}
    if "lark_fast" in by:
        for r in rows:
            if r["status"] == "ok":
                r["time_vs_lark_fast"] = round(r["seconds"] / by["lark_fast"]["seconds"], 3)
    meta = {**machine(), "model": args.shape or args.model, "device": args.device,
            "dtype": str(next(model.parameters()).dtype), "trajectories": len(seqs)}
    path = write_csv(RESULTS / args.output, rows, meta)
    print(f"wrote {path}")
    for a, b in (("lark_fast", "bare_forward"), ("lark_fast", "forward_matmul"), ("reference", "lark_fast")):
        if a in by and b in by:
            print(f"{a} / {b} time: {by[a]['seconds'] / by[b]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
