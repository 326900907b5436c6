"""Benchmark of the C++ selection solvers against a vectorised numpy implementation and one memory pass.

For each size N and group size K: the LARK rule (lark_weights, B = 3), global χ² with item caps and
global χ² with item and group caps (chi2_global), each timed side by side with numpy and with one
memory pass: np.copyto of the energies into an existing array (read N doubles, write N doubles).

What is compared (issue 4's targets):
  - passes = solver time / one memory pass. The solvers return a new float64 array, whose pages the
    kernel must fault in and zero (np.copyto writes into pages already there), so the LARK rule is also
    timed writing into an existing array (lark_weights(..., out=buf)): "passes (out=)".
  - speedup = numpy time / solver time (numpy: best of 3 for the LARK rule, one run for chi2_global);
    numpy also returns new arrays.
  - peak memory: the largest resident-set growth during one call (VmHWM after resetting it through
    /proc/self/clear_refs), and tracemalloc's peak of numpy-side allocations. Both are asserted to stay
    within the output + O(G) (64 bytes per group and per chunk of 2^15 items) + 16 MB of slack.
Timings are the best of --repeats runs, the solver, its out= variant and np.copyto interleaved, so all
see the same machine load (the 1-minute load average is recorded for each size); the memory pass is the
faster of that np.copyto and np.copyto run back to back.
Writes benchmarks/results/bench_solver.csv (+ .png with matplotlib) with the machine and git sha.

    python benchmarks/bench_solver.py                  # 1M, 10M, 100M items; K = 10 and 33
    python benchmarks/bench_solver.py --threads 1      # one OpenMP thread (a machine shared with others)
    python benchmarks/bench_solver.py --quick          # 1M items, one repeat
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SLACK_MB = 16.0


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


def best_interleaved(fns: dict, repeats: int) -> dict:
    """Best time of each function, the functions run in turn within each repeat (after one warm-up)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))


def peak_memory_mb(fn) -> tuple[float, float]:
    """(resident-set growth at its peak during fn, tracemalloc's peak of the allocations fn makes), in MB.
    The resident peak (VmHWM) is reset through /proc/self/clear_refs first (Linux); NaN where it cannot be."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    tracemalloc.start()
    out = fn()
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss = (_status_kb("VmHWM") - base) / 1024 if base is not None else float("nan")
    del out
    return max(rss, 0.0), traced


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8], help="item counts N")
    ap.add_argument("--groups", type=int, nargs="+", default=[10, 33], help="items per group K")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: OMP_NUM_THREADS or all)")
    ap.add_argument("--numpy-max-lark", type=float, default=1e8, help="largest N timed with numpy for the LARK rule")
    ap.add_argument("--numpy-max-global", type=float, default=1e7,
                    help="largest N timed with numpy for chi2_global (about 100 whole-array passes: slow)")
    ap.add_argument("--quick", action="store_true", help="1M items, one repeat")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_solver.csv")
    args = ap.parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read when the extension's OpenMP starts
    from lark_fast import solver
    from lark_fast.measure import machine

    if args.quick:
        args.sizes, args.repeats = [1e6], 1
    info = {**machine(), "simd": solver.simd(), "threads": os.environ.get("OMP_NUM_THREADS", "all")}
    print(f"# {info}")
    rows = []
    rng = np.random.default_rng(0)
    for n_req in args.sizes:
        for k in args.groups:
            n = int(n_req) // k * k
            e = rng.standard_normal(n)
            o = np.arange(0, n + 1, k, dtype=np.int64)
            g = len(o) - 1
            dst, buf = np.empty_like(e), np.empty_like(e)
            np.copyto(dst, e)
            buf.fill(0.0)
            load = os.getloadavg()[0]
            cap, group_cap = 5.0 / n, 1.5 / g
            cases = [
                ("lark B=3", lambda: solver.lark_weights(e, o, 3), lambda: solver.lark_weights(e, o, 3, out=buf),
                 lambda: lark_numpy(e, k, 3), args.numpy_max_lark),
                ("chi2_global cap", lambda: solver.chi2_global(e, tau=0.2, cap=cap), None,
                 lambda: global_numpy(e, 0.2, cap), args.numpy_max_global),
                ("chi2_global cap+group_cap",
                 lambda: solver.chi2_global(e, tau=0.2, cap=cap, offsets=o, group_cap=group_cap), None,
                 lambda: global_numpy(e, 0.2, cap, k, group_cap), args.numpy_max_global),
            ]
            for name, ours, ours_out, ref, numpy_max in cases:
                fns = {"copy": lambda: np.copyto(dst, e), "ours": ours}
                if ours_out is not None:
                    fns["ours_out"] = ours_out
                t = best_interleaved(fns, args.repeats)
                # one memory pass: the faster of np.copyto between the solver's runs and back to back (caches
                # warm: at 1M items both arrays stay in cache), so the ratios are never flattered
                t["copy"] = min(t["copy"], best_interleaved({"copy": fns["copy"]}, args.repeats)["copy"])
                np_repeats = min(args.repeats, 3) if name.startswith("lark") else 1  # chi2 in numpy: ~100 passes
                t_np = best_interleaved({"np": ref}, np_repeats)["np"] if n <= numpy_max else float("nan")
                rss_mb, traced_mb = peak_memory_mb(ours)
                output_mb = n * 8 / 2**20
                bound_mb = output_mb + 64 * (g + n / 2**15) / 2**20 + SLACK_MB
                assert rss_mb <= bound_mb and traced_mb <= bound_mb, (name, n, rss_mb, traced_mb, bound_mb)
                row = {"op": name, "N": n, "K": k, "ours_s": t["ours"], "ours_out_s": t.get("ours_out", float("nan")),
                       "numpy_s": t_np, "copy_s": t["copy"], "memory_passes": t["ours"] / t["copy"],
                       "memory_passes_out": t.get("ours_out", float("nan")) / t["copy"],
                       "speedup_vs_numpy": t_np / t["ours"], "speedup_vs_numpy_out": t_np / t.get("ours_out", np.nan),
                       "peak_rss_growth_mb": rss_mb, "peak_traced_mb": traced_mb, "output_mb": output_mb,
                       "memory_bound_mb": bound_mb, "load_1min": load, **info}
                rows.append(row)
                print(f"{name:26s} N={n:>11,d} K={k:2d}  ours {t['ours'] * 1e3:8.1f} ms  copy {t['copy'] * 1e3:6.1f} ms"
                      f"  passes {row['memory_passes']:5.2f} (out= {row['memory_passes_out']:5.2f})"
                      f"  numpy {t_np * 1e3:8.1f} ms x{row['speedup_vs_numpy']:5.1f}"
                      f" (out= x{row['speedup_vs_numpy_out']:5.1f})"
                      f"  peak +{rss_mb:6.1f} MB (output {output_mb:6.1f})  load {load:.1f}", flush=True)
            del e, dst, buf
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
                if name.startswith("lark"):
                    pts = [(r["N"], r["memory_passes_out"]) for r in rows if r["op"] == name and r["K"] == k]
                    ax.plot(*zip(*pts), marker="x", linestyle="--", label=f"{name} K={k} out=")
        ax.set_xscale("log")
        ax.set_xlabel("items N")
        ax.set_ylabel("time / one memory pass (np.copyto)")
        ax.set_title(f"lark_fast solver ({info['cpu']}, {info['cores']} cores, {info['simd']}, "
                     f"threads {info['threads']}, {info['git']})", fontsize=8)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    except ImportError:
        pass
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
