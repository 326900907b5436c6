"""Benchmark of the LM-head statistics op (docs/method.md §2): time and peak extra memory per provider and shape.

    python benchmarks/bench_lm_head_stats.py                  # CUDA: every provider, real model shapes
    python benchmarks/bench_lm_head_stats.py --cpu            # CPU: the fused C++ kernel vs a bare GEMM, top-50
    python benchmarks/bench_lm_head_stats.py --sweep          # CUDA: launch configs of the fused kernel

Providers: lark-triton (fused kernel), lark-cpu (the fused C++ kernel, ``lark_fast._C``), torch-chunked
(streaming torch path; it upcasts, so its GEMMs run in fp32), torch-naive (logits GEMM in the input dtype,
then materialised fp32 logits, as the published scorer), liger-flce (Liger's fused linear cross-entropy, loss
only, when installed), on CUDA torch-gemm (the bare logits GEMM h @ W^T in the input dtype: the speed of
light), and on CPU bare-gemm (the same, ``torch.mm(h, W.T)``, which writes the [N, V] logits) and
bare-chunked-lse (the GEMM and a running logsumexp with torch-chunked's blocking). Effective TFLOP/s counts
the logits GEMM only, 2 N d V; ``vs_reference`` is time / time of torch-chunked (CUDA), or on CPU best time /
best time of bare-gemm, the providers timed in interleaved rounds (each round runs every provider once) so
that a shared machine's load hits all of them alike. The CPU defaults are the issue's acceptance runs: fp32,
all statistics with top-50, 2 threads, best of 3, at SmolLM2's head (N = 1024), Qwen2.5-1.5B's (N = 512) and
the head-dominated 64 x 151936 (N = 1024).
Writes ``<out>/lm_head_stats_<tag>.csv`` (and a PNG when matplotlib is installed), with machine and git sha.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, PeakMemory, machine, write_csv  # noqa: E402

from lark_fast.kernels.head import TEMP_BUDGET  # noqa: E402
from lark_fast.kernels.lm_head_stats import (CPU_AVAILABLE, lm_head_stats_cpu, lm_head_stats_torch,  # noqa: E402
                                             lm_head_stats_triton)
from lark_fast.kernels.lm_head_stats.cpu import simd as cpu_simd  # noqa: E402

SHAPES = {  # name: (hidden size d, vocabulary V)
    "smollm2-135m": (576, 49152),
    "qwen2.5-1.5b": (1536, 151936),
    "llama-3.2-1b": (2048, 128256),
    "4096x131072": (4096, 131072),
    "64x151936": (64, 151936),  # head-dominated: the statistics' own cost shows
}
CPU_TOKENS = {"smollm2-135m": 1024, "qwen2.5-1.5b": 512, "64x151936": 1024}  # the --cpu defaults: shape -> N

def published_naive(h, W, y, topk):
    """The published scorer's way: full fp32 logits and probabilities in memory."""
    z = (h @ W.T).float()
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    lp_y = logp.gather(1, y[:, None])[:, 0]
    out = [-lp_y, (p * p).sum(1) - 2 * lp_y.exp() + 1, -(p * logp).sum(1), 1 + (z > z.gather(1, y[:, None])).sum(1)]
    if topk:
        pk = torch.softmax(z.topk(topk, dim=1).values, dim=1)
        out.append((pk * pk).sum(1))
    return out


def bare_chunked_lse(h, W, vocab_block=8192):
    """logsumexp of h W^T with torch-chunked's token and vocabulary blocks, nothing else."""
    token_block = max(1, TEMP_BUDGET // vocab_block)
    out = torch.empty(h.shape[0], device=h.device)
    for t0 in range(0, h.shape[0], token_block):
        hb = h[t0:t0 + token_block].float()
        lse = torch.full((hb.shape[0],), -math.inf, device=h.device)
        for v0 in range(0, W.shape[0], vocab_block):
            lse = torch.logaddexp(lse, torch.logsumexp(hb @ W[v0:v0 + vocab_block].float().T, dim=1))
        out[t0:t0 + token_block] = lse
    return out


def providers(device, topk):
    out = {}
    if lm_head_stats_triton is not None and device == "cuda":
        out["lark-triton"] = lambda h, W, y: lm_head_stats_triton(h, W, y, topk=topk)
    if device == "cpu":  # the kernel and its reference run back to back in each round
        if CPU_AVAILABLE:
            out["lark-cpu"] = lambda h, W, y: lm_head_stats_cpu(h, W, y, topk=topk)
        out["bare-gemm"] = lambda h, W, y: torch.mm(h, W.T)
    out["torch-chunked"] = lambda h, W, y: lm_head_stats_torch(h, W, y, topk=topk)
    out["torch-naive"] = lambda h, W, y: published_naive(h, W, y, topk)
    if device == "cpu":
        out["bare-chunked-lse"] = lambda h, W, y: bare_chunked_lse(h, W)
    elif topk == 0:
        out["torch-gemm"] = lambda h, W, y: h @ W.T
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            liger = LigerFusedLinearCrossEntropyLoss()
            out["liger-flce"] = lambda h, W, y: liger(W, h, y)
        except ImportError:
            pass
    return out


def time_cuda(fn):
    """(median ms, peak extra MB) of a CUDA function; the first call (which compiles) is not timed."""
    import triton.testing
    torch.cuda.empty_cache()
    with PeakMemory("cuda") as mem:
        fn()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"), mem.mb


def time_cpu(fns, repeats):
    """Per function: (best ms, peak extra MB). Rounds run every function once, back to back, so that a
    shared machine's load hits all of them alike; the fastest run is the least disturbed one."""
    times, mbs = {name: [] for name in fns}, {}
    for name, fn in fns.items():
        with PeakMemory("cpu") as mem:
            fn()
        mbs[name] = mem.mb
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (1e3 * min(ts), mbs[name]) for name, ts in times.items()}


def inputs(n, d, v, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(n, d, generator=g, device=device).to(dtype)
    W = (torch.randn(v, d, generator=g, device=device) * 0.02).to(dtype)
    y = torch.randint(0, v, (n,), generator=g, device=device)
    return h, W, y


def run_shapes(args, device, dtype):
    rows = []
    for topk in args.topk:
        fns = providers(device, topk)
        chosen = {k: f for k, f in fns.items() if not args.providers or k in args.providers}
        for shape in args.shapes:
            d, v = SHAPES[shape]
            n = args.n or (CPU_TOKENS.get(shape, 1024) if device == "cpu" else 8192)
            h, W, y = inputs(n, d, v, dtype, device)
            flop = 2 * n * d * v
            results = {}
            if device == "cuda":
                for name, fn in chosen.items():
                    try:
                        results[name] = (*time_cuda(lambda: fn(h, W, y)), "ok")
                    except torch.cuda.OutOfMemoryError:
                        results[name] = (math.nan, math.nan, "oom")
                    torch.cuda.empty_cache()
            else:
                res = time_cpu({name: (lambda fn=fn: fn(h, W, y)) for name, fn in chosen.items()}, args.repeats)
                results = {name: (ms, mb, "ok") for name, (ms, mb) in res.items()}
            ref = results.get("bare-gemm" if device == "cpu" else "torch-chunked", (math.nan,))[0]
            for name, (ms, mb, status) in results.items():
                ratio = ms / ref
                rows.append(dict(provider=name, shape=shape, N=n, d=d, V=v, dtype=str(dtype)[6:], topk=topk,
                                 ms=f"{ms:.3f}", tflops=f"{flop / ms / 1e9:.4g}", extra_mb=f"{mb:.1f}",
                                 vs_reference=f"{ratio:.3f}", status=status))
                print(f"{shape:14s} topk={topk:<3d} {name:17s} {ms:10.3f} ms {flop / ms / 1e9:8.3g} TFLOP/s "
                      f"{mb:9.1f} MB extra   x{ratio:.3f} vs reference", flush=True)
    return rows


SWEEP = [  # block_n, block_v, block_d, group_n, num_warps, num_stages, vocab_per_split; the first is the default
    (128, 128, 64, 8, 8, 3, 8192), (128, 128, 64, 8, 8, 4, 8192), (128, 128, 64, 4, 8, 3, 8192),
    (128, 128, 64, 16, 8, 3, 8192), (128, 256, 64, 8, 8, 3, 8192), (128, 64, 64, 8, 4, 4, 8192),
    (64, 128, 64, 8, 4, 4, 8192), (128, 128, 32, 8, 8, 5, 8192), (128, 128, 64, 8, 8, 3, 16384),
]


def run_sweep(args, dtype):
    from lark_fast.kernels.lm_head_stats.fused import Config
    rows = []
    for shape in args.shapes:
        d, v = SHAPES[shape]
        h, W, y = inputs(args.n, d, v, dtype, "cuda")
        for bn, bv, bd, g, w, s, split in SWEEP:
            cfg = Config(block_n=bn, block_v=bv, block_d=bd, group_n=g, num_warps=w, num_stages=s,
                         vocab_per_split=split)
            try:
                ms, mb = time_cuda(lambda: lm_head_stats_triton(h, W, y, config=cfg))
                status = "ok"
            except Exception as e:  # a config the compiler rejects (shared memory, registers) is a result too
                ms, mb, status = math.nan, math.nan, type(e).__name__
            flop = 2 * args.n * d * v
            rows.append(dict(provider="lark-triton", shape=shape, N=args.n, d=d, V=v, dtype=str(dtype)[6:], topk=0,
                             ms=f"{ms:.3f}", tflops=f"{flop / ms / 1e9:.4g}", extra_mb=f"{mb:.1f}", status=status,
                             config=f"{bn}/{bv}/{bd} g{g} w{w} s{s} split{split}"))
            print(f"{shape} {rows[-1]['config']:32s} {ms:9.3f} ms {flop / ms / 1e9:7.1f} TFLOP/s {status}", flush=True)
    return rows


def plot(rows, meta, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in rows if r["status"] == "ok"]
    shapes = list(dict.fromkeys(f"{r['shape']} k{r['topk']}" for r in rows))
    names = list(dict.fromkeys(r["provider"] for r in rows))
    panels = [("ms", "time (ms, log)"), ("extra_mb", "peak extra memory (MB, log)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    axes = axes[0]
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        for ax, (key, _) in zip(axes, panels):
            vals = [next((float(r[key]) for r in rows if r["provider"] == name and f"{r['shape']} k{r['topk']}" == s),
                         math.nan) for s in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=name)
    for ax, (_, label) in zip(axes, panels):
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=20, fontsize=8)
    axes[0].legend(fontsize=8)
    where = meta["gpu"] if meta["device"] == "cuda" else f"{meta['cpu']}, {meta['torch_threads']} threads"
    fig.suptitle(f"LM-head statistics, N={rows[0]['N']} {rows[0]['dtype']}: {where} @ {meta['git']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="CPU mode: fp32, top-50, the fused C++ kernel vs a bare GEMM")
    p.add_argument("--sweep", action="store_true", help="time launch configs of the fused kernel (CUDA)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None)
    p.add_argument("--providers", nargs="+", default=None)
    p.add_argument("--n", type=int, default=None, help="tokens (default 8192 on CUDA, per shape on CPU: CPU_TOKENS)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None)
    p.add_argument("--topk", type=int, nargs="+", default=None, help="default 0 on CUDA, 50 on CPU")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch's and the C++ kernel's)")
    p.add_argument("--repeats", type=int, default=3, help="CPU timing rounds (best of)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--tag", default=None, help="file name suffix (default: cpu, gpu or sweep)")
    args = p.parse_args(argv)

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: use --cpu")
    if device == "cpu":
        torch.set_num_threads(args.threads)
    if args.topk is None:
        args.topk = [50] if args.cpu else [0]
    if not args.cpu:
        args.n = args.n or 8192
    if args.shapes is None:
        args.shapes = list(CPU_TOKENS) if args.cpu else ["4096x131072"] if args.sweep else list(SHAPES)[:4]
    dtype = getattr(torch, args.dtype or ("float32" if args.cpu else "bfloat16"))
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    # LARK_GIT_SHA: for trees copied without .git (the GPU check machine)
    meta = {**machine(), "device": device, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton_version, "simd": cpu_simd() if CPU_AVAILABLE else ""}
    meta["git"] = os.environ.get("LARK_GIT_SHA") or meta["git"] or "unknown"

    if device == "cpu" and CPU_AVAILABLE:
        print(f"lark-cpu: the C++ kernel's instruction set is {meta['simd']}", flush=True)
    rows = run_sweep(args, dtype) if args.sweep else run_shapes(args, device, dtype)
    tag = args.tag or ("sweep" if args.sweep else device if device == "cpu" else "gpu")
    path = write_csv(Path(args.out) / f"lm_head_stats_{tag}.csv", rows, meta)
    if not args.sweep:
        plot(rows, meta, path.with_suffix(".png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
