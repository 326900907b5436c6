"""Benchmark of the C++ selection solvers against a vectorised numpy implementation and one memory pass.

For each size N and group size K: the LARK rule (lark_weights, B = 3), global χ² with item caps and
global χ² with item and group caps (chi2_global), each timed side by side with numpy and with
np.copyto of the energies (one memory pass). Peak memory is checked against inputs + output + O(G).
Writes benchmarks/results/bench_solver.csv (+ .png with matplotlib) with the machine and git sha.

    python benchmarks/bench_solver.py                 # 1M, 10M, 100M items; K = 10 and 33
    python benchmarks/bench_solver.py --quick         # 1M items only, one repeat
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

from lark_fast import solver

RESULTS = Path(__file__).resolve().parent / "results"


def lark_numpy(e: np.ndarray, k: int, B: int) -> np.ndarray:
    """The published rule for equal groups of k, vectorised over groups (NaN as −inf, B < k)."""
    x = np.where(np.isnan(e), -np.inf, e).reshape(-1, k)
    order = np.argsort(-x, axis=1, kind="stable")[:, : B + 1]
    top = np.take_along_axis(x, order, axis=1)
    t = top[:, B:B + 1]
    gap = top[:, :B] - t
    spread = gap.sum(axis=1, keepdims=True)
    w = np.zeros_like(x)
    flat = np.where(spread / B <= 1e-12, 1.0 / B, gap / np.where(spread > 0, spread, 1.0))
    np.put_along_axis(w, order[:, :B], flat, axis=1)
    return w.ravel()


def global_numpy(e: np.ndarray, tau: float, cap: float, k: int | None = None, group_cap: float | None = None):
    """chi2_global with uniform reference by Newton/bisection on ν with whole-array numpy passes (and, with
    group caps, per-group bisection for held groups on the [G, k] view)."""
    n = len(e)
    s, p = 0.5 / tau, 1.0 / n

    def groups_at(nu):
        q = np.clip(s * p * (e - nu), 0.0, cap)
        return q if group_cap is None else q.reshape(-1, k)

    def total(nu):
        q = groups_at(nu)
        return q.sum() if group_cap is None else np.minimum(q.sum(axis=1), group_cap).sum()

    lo, hi = e.min() - max(cap, group_cap or 0.0) / (s * p), e.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        h = total(mid)
        if abs(h - 1.0) <= 1e-12:
            break
        lo, hi = (mid, hi) if h > 1.0 else (lo, mid)
    q = groups_at(mid)
    if group_cap is None:
        return q
    held = q.sum(axis=1) > group_cap
    x = e.reshape(-1, k)[held]
    glo, ghi = np.full(len(x), mid), x.max(axis=1)
    for _ in range(60):
        gm = 0.5 * (glo + ghi)
        over = np.clip(s * p * (x - gm[:, None]), 0.0, cap).sum(axis=1) > group_cap
        glo, ghi = np.where(over, gm, glo), np.where(over, ghi, gm)
    q[held] = np.clip(s * p * (x - ghi[:, None]), 0.0, cap)
    return q.ravel()


def best_of(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine():
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "all"), "git": sha}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8], help="item counts N")
    ap.add_argument("--groups", type=int, nargs="+", default=[10, 33], help="items per group K")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1M items, one repeat")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_solver.csv")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [1e6], 1
    info = machine()
    print(f"# {info}")
    rows = []
    rng = np.random.default_rng(0)
    for n_req in args.sizes:
        for k in args.groups:
            n = int(n_req) // k * k
            e = rng.standard_normal(n)
            o = np.arange(0, n + 1, k, dtype=np.int64)
            g = len(o) - 1
            dst = np.empty_like(e)
            np.copyto(dst, e)
            one_pass = best_of(lambda: np.copyto(dst, e), args.repeats)
            base_mb = peak_rss_mb()
            cap, group_cap = 5.0 / n, 1.5 / g
            cases = [
                ("lark B=3", lambda: solver.lark_weights(e, o, 3), lambda: lark_numpy(e, k, 3)),
                ("chi2_global cap", lambda: solver.chi2_global(e, tau=0.2, cap=cap),
                 lambda: global_numpy(e, 0.2, cap)),
                ("chi2_global cap+group_cap", lambda: solver.chi2_global(e, tau=0.2, cap=cap, offsets=o,
                                                                        group_cap=group_cap),
                 lambda: global_numpy(e, 0.2, cap, k, group_cap)),
            ]
            for name, ours, ref in cases:
                t_ours = best_of(ours, args.repeats)
                extra_mb = peak_rss_mb() - base_mb  # growth over inputs already resident
                t_np = best_of(ref, 1) if n <= 10_000_000 or args.quick else float("nan")
                row = {"op": name, "N": n, "K": k, "ours_s": t_ours, "numpy_s": t_np, "copy_s": one_pass,
                       "speedup_vs_numpy": t_np / t_ours, "memory_passes": t_ours / one_pass,
                       "peak_growth_mb": max(extra_mb, 0.0), "output_mb": n * 8 / 2**20, **info}
                rows.append(row)
                print(f"{name:28s} N={n:>11,d} K={k:2d}  ours {t_ours*1e3:9.1f} ms  numpy {t_np*1e3:9.1f} ms  "
                      f"x{row['speedup_vs_numpy']:6.1f}  passes {row['memory_passes']:5.2f}")
            del e, dst
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name in dict.fromkeys(r["op"] for r in rows):
            for k in args.groups:
                pts = [(r["N"], r["memory_passes"]) for r in rows if r["op"] == name and r["K"] == k]
                ax.plot(*zip(*pts), marker="o", label=f"{name} K={k}")
        ax.set_xscale("log")
        ax.set_xlabel("items N")
        ax.set_ylabel("time / one memory pass")
        ax.set_title(f"lark_fast solver ({info['cpu']}, {info['cores']} cores, {info['git']})", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    except ImportError:
        pass
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
