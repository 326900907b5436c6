"""Time and peak memory of one forward + backward of the LM-head loss: lark_fast's fused weighted loss
against Hugging Face's default causal-LM loss, on the same hidden states, head and labels.

  lark_fast   weighted_sft_loss (Triton on CUDA, chunked torch on CPU), token weights 1, normaliser =
              number of label tokens: the same number as HF's mean loss
  hf_default  logits = hidden @ W^T materialised [T, V] in the input dtype, then transformers'
              ForCausalLMLoss (upcast to fp32, cross-entropy), autograd backward
Every row reports seconds (median of --reps after one warm-up), peak extra memory
(CUDA allocator peak, or sampled RSS on CPU) and |loss - hf_default loss|; the ratios column of the
hf_default row is hf_default / lark_fast. Labels mark a third of the tokens as prompt (-100).

    python benchmarks/bench_weighted_loss.py                                       # CPU, SmolLM2 head
    python benchmarks/bench_weighted_loss.py --device cuda --shape llama3-8b --tokens 8192,32768
    python benchmarks/bench_weighted_loss.py --device cuda --shape qwen2.5-7b --tokens 8192,32768
    python benchmarks/bench_weighted_loss.py --dry-run                             # tiny shapes, checks the script

Output: benchmarks/results/bench_weighted_loss_<device>.csv (machine and git sha in every row).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, PeakMemory, machine, sync, write_csv  # noqa: E402

from lark_fast.train import weighted_sft_loss  # noqa: E402

SHAPES = {  # (hidden size, vocabulary)
    "smollm2-135m": (576, 49152),
    "qwen2.5-0.5b": (896, 151936),
    "llama3-8b": (4096, 128256),
    "qwen2.5-7b": (3584, 152064),
    "tiny": (64, 1000),
}



def hf_default(hidden, weight, labels):
    from transformers.loss.loss_utils import ForCausalLMLoss
    logits = torch.nn.functional.linear(hidden, weight)[None]
    return ForCausalLMLoss(logits, labels[None], vocab_size=weight.shape[0])


def lark(hidden, weight, labels):
    targets = torch.cat([labels[1:], labels.new_full((1,), -100)])  # position t predicts token t + 1
    n = int((targets != -100).sum())
    return weighted_sft_loss(hidden, weight, targets, None, n)


PROVIDERS = {"lark_fast": lark, "hf_default": hf_default}


def measure(fn, hidden, weight, labels, device, reps):
    def once():
        h = hidden.detach().requires_grad_()
        w = weight.detach().requires_grad_()
        sync(device)
        t0 = time.perf_counter()
        loss = fn(h, w, labels)
        loss.backward()
        sync(device)
        return time.perf_counter() - t0, float(loss.detach())

    once()  # warm-up: Triton compilation, allocator
    times, loss = [], None
    with PeakMemory(device) as mem:
        for _ in range(reps):
            t, loss = once()
            times.append(t)
    return statistics.median(times), mem.mb, loss


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--tokens", default="1024,4096", help="comma-separated token counts")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--providers", default="lark_fast,hf_default")
    p.add_argument("--dry-run", action="store_true", help="tiny shape, one rep, no CSV")
    args = p.parse_args()
    if args.dry_run:
        args.shape, args.tokens, args.reps = "tiny", "64,128", 1
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype] or \
        (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    d, v = SHAPES[args.shape]
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(v, d, generator=g) * d ** -0.5).to(device=args.device, dtype=dtype)
    rows = []
    for n in (int(x) for x in args.tokens.split(",")):
        hidden = torch.randn(n, d, generator=g).to(device=args.device, dtype=dtype)
        labels = torch.randint(0, v, (n,), generator=g)
        labels[torch.rand(n, generator=g) < 1 / 3] = -100
        labels = labels.to(args.device)
        results = {}
        for name in args.providers.split(","):
            try:
                results[name] = measure(PROVIDERS[name], hidden, weight, labels, args.device, args.reps)
            except torch.OutOfMemoryError:
                results[name] = (float("nan"), float("nan"), float("nan"))
                torch.cuda.empty_cache()
        ref = results.get("hf_default", (None, None, None))[2]
        base = results.get("lark_fast")
        for name, (secs, mb, loss) in results.items():
            row = {"provider": name, "tokens": n, "hidden": d, "vocab": v, "dtype": str(dtype).replace("torch.", ""),
                   "seconds": round(secs, 4), "peak_mb": round(mb, 1), "loss": loss,
                   "abs_diff_vs_hf": None if ref is None else abs(loss - ref)}
            if name != "lark_fast" and base is not None:
                row["time_ratio_vs_lark"] = round(secs / base[0], 3)
                row["memory_ratio_vs_lark"] = round(mb / max(base[1], 1e-9), 2)
            rows.append(row)
            print(f"{name:<11} T={n:<6} {secs:8.3f} s  {mb:9.1f} MB  loss {loss:.6f}", flush=True)
        del hidden, labels
    if args.dry_run:
        return
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    meta = {**machine(), "device": args.device, "shape": args.shape, "reps": args.reps,
            "command": "python " + " ".join(sys.argv)}
    print(write_csv(RESULTS / f"bench_weighted_loss_{kind}.csv", rows, meta))


if __name__ == "__main__":
    main()
