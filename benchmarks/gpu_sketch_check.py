"""GPU check of the sketch kernels: the compiled Triton paths against the torch paths, then timings.

  1. ``lm_head_backward_triton`` vs ``lm_head_backward_torch`` (bf16 and fp32 operands, soft-cap,
     ignored tokens), bitwise determinism and batch invariance
  2. the head's output-gradient sketch in ``lm_head_stats_triton`` (k = 16 and 64, several vocabulary
     splits) vs the torch path
  3. weight offsets past 2^31 elements (V * d > 2^31)
  4. time and peak extra memory at N tokens for each head shape: statistics without / with a sketch
     (k = 16, 64), the backward (Triton vs torch chunked)

    python benchmarks/gpu_sketch_check.py             # CUDA; writes results/gpu_sketch_kernels.csv
    (benchmarks/gpu_check.sh runs it as its ``sketch`` step group)
    python benchmarks/gpu_sketch_check.py --cpu       # dry run: tiny shapes, Triton interpreter

Exits non-zero when a check fails (after running the others).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, PeakMemory, machine, sync, write_csv  # noqa: E402

from lark_fast.kernels.lm_head_backward import lm_head_backward_torch, lm_head_backward_triton  # noqa: E402
from lark_fast.kernels.lm_head_stats import lm_head_stats_torch, lm_head_stats_triton  # noqa: E402
from lark_fast.kernels.lm_head_stats.fused import Config  # noqa: E402

SHAPES = {"smollm2": (576, 49152), "qwen2.5-1.5b": (1536, 151936), "llama3-8b": (4096, 128256)}


def inputs(n, d, v, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = (torch.randn(n, d, generator=g) * 2).to(device, dtype)
    w = (torch.randn(v, d, generator=g) / d ** 0.5).to(device, dtype)
    y = torch.randint(0, v, (n,), generator=g).to(device)
    y[::17] = -100
    return h, w, y, torch.rand(n, generator=g).to(device)


def rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30))


def checks(device, n, shapes, failures):
    for name, (d, v) in shapes.items():
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for cap in (None, 30.0):
                h, w, y, g = inputs(n, d, v, dtype, device)
                g = g / 500  # the upstream gradient of a mean over ~500 tokens: fp16 tails must not underflow
                kw = dict(logit_scale=1.0, softcap=cap)
                ref_stats = lm_head_stats_torch(h, w, y, sketch_dim=16, sketch_key=7, **kw)
                ours = lm_head_backward_triton(h, w, y, ref_stats.lse, g, **kw)
                ref = lm_head_backward_torch(h, w, y, ref_stats.lse, g, **kw)
                tol = 2e-3 if dtype == torch.float32 else 2e-2  # tf32; 16-bit operands of the second GEMM
                err = rel_err(ours, ref)
                again = lm_head_backward_triton(h, w, y, ref_stats.lse, g, **kw)
                part = lm_head_backward_triton(h[5:n - 3], w, y[5:n - 3], ref_stats.lse[5:n - 3], g[5:n - 3], **kw)
                ok = err < tol and torch.equal(ours, again) and torch.equal(ours[5:n - 3], part)
                print(f"backward {name} {dtype} softcap={cap}: rel err {err:.2e} deterministic "
                      f"{torch.equal(ours, again)} batch-invariant {torch.equal(ours[5:n - 3], part)}", flush=True)
                if not ok:
                    failures.append(f"backward {name} {dtype} {cap}")
                for k in (16, 64):
                    ref_sk = lm_head_stats_torch(h, w, y, sketch_dim=k, sketch_key=7, **kw).sketch
                    cfgs = [None, Config(block_n=64, block_v=64, block_d=32, vocab_per_split=4096)]
                    for cfg in cfgs:
                        sk = lm_head_stats_triton(h, w, y, sketch_dim=k, sketch_key=7, config=cfg, **kw).sketch
                        err = rel_err(sk, ref_sk)
                        print(f"sketch {name} {dtype} softcap={cap} k={k} config={cfg}: rel err {err:.2e}", flush=True)
                        if not err < 2e-2:
                            failures.append(f"sketch {name} {dtype} {cap} {k}")


def large_offsets(device, failures):
    """V * d > 2^31: weight offsets need int64 in the backward and the sketch."""
    d, v = 8192, 262400
    h, w, y, g = inputs(64, d, v, torch.bfloat16, device)
    y[:32] = v - 1 - torch.arange(32, device=device)
    stats = lm_head_stats_torch(h, w, y, sketch_dim=16, sketch_key=7)
    err = rel_err(lm_head_backward_triton(h, w, y, stats.lse, g), lm_head_backward_torch(h, w, y, stats.lse, g))
    err_sk = rel_err(lm_head_stats_triton(h, w, y, sketch_dim=16, sketch_key=7).sketch, stats.sketch)
    print(f"large offsets (V * d = {v * d}): backward rel err {err:.2e}, sketch rel err {err_sk:.2e}", flush=True)
    if not (err < 2e-2 and err_sk < 2e-2):
        failures.append("large offsets")


def timings(device, n, shapes, repeats):
    rows = []
    for name, (d, v) in shapes.items():
        h, w, y, g = inputs(n, d, v, torch.bfloat16, device)
        lse = lm_head_stats_triton(h, w, y).lse
        cases = {"stats": lambda: lm_head_stats_triton(h, w, y),
                 "stats+sketch16": lambda: lm_head_stats_triton(h, w, y, sketch_dim=16, sketch_key=7),
                 "stats+sketch64": lambda: lm_head_stats_triton(h, w, y, sketch_dim=64, sketch_key=7),
                 "backward_triton": lambda: lm_head_backward_triton(h, w, y, lse, g),
                 "backward_torch": lambda: lm_head_backward_torch(h, w, y, lse, g)}
        for case, fn in cases.items():
            fn()
            sync(device)
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn()
                sync(device)
                ms = (time.perf_counter() - t0) / repeats * 1e3
            rows.append({"shape": name, "d": d, "V": v, "N": n, "case": case, "ms": round(ms, 3),
                         "peak_mem_mb": round(mem.mb, 1)})
            print(rows[-1], flush=True)
    return rows



def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="dry run on CPU through the Triton interpreter")
    p.add_argument("--n", type=int, default=8192, help="tokens of the timing runs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS), help="directory of the CSV (default benchmarks/results)")
    args = p.parse_args()
    device = "cpu" if args.cpu else "cuda"
    shapes = {"tiny": (40, 700)} if args.cpu else SHAPES
    failures: list = []
    checks(device, 64 if args.cpu else 1024, shapes if args.cpu else {"smollm2": SHAPES["smollm2"],
                                                                      "llama3-8b": SHAPES["llama3-8b"]}, failures)
    if not args.cpu:
        large_offsets(device, failures)
    rows = timings(device, 64 if args.cpu else args.n, shapes, 1 if args.cpu else args.repeats)
    path = write_csv(Path(args.out) / ("gpu_sketch_kernels_cpu.csv" if args.cpu else "gpu_sketch_kernels.csv"), rows,
                     machine())
    print(f"wrote {path}; failed checks: {failures or 'none'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
