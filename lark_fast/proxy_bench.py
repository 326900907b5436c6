"""``lark-fast bench proxies``: what each selection proxy costs on your model and pool, and whether
the proxies agree.

Every method is computed from scratch the way a user would compute it alone, side by side in one run:
``lark`` (the fused pass without top-K), the other single-pass methods (one fused pass with top-K:
they all come out of it), ``ifd`` and ``local_naturalness`` (their extra forwards on top of the fused
pass), ``length`` / ``random`` (tokenisation only), and the published reference approach (one
trajectory per forward, full fp32 logits, top-50 Brier). Outputs in DIR: ``costs.csv``,
``correlations.csv`` (Spearman within problems, averaged over problems), ``overlap.csv`` (top-B
overlap of the selections), ``costs.png`` / ``correlations.png`` (with matplotlib) and ``summary.md``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from .chat import ChatTokenizer
from .groups import group_offsets
from .measure import PeakMemory, machine, sync, write_csv
from .methods import FUSED, METHODS, SKETCH, random_scores, ranking_score
from .models import context_length
from .pool import PoolReader
from .published import reference_scores
from .rank_correlation import spearman_within_problems
from .select import select


def topb_overlap(problem_ids, wa: np.ndarray, wb: np.ndarray) -> float:
    """Mean over problems of |selected by a ∩ selected by b| / |selected by a|."""
    order, offsets = group_offsets(problem_ids)
    values = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        idx = order[lo:hi]
        sa, sb = set(idx[wa[idx] > 0]), set(idx[wb[idx] > 0])
        if sa:
            values.append(len(sa & sb) / len(sa))
    return float(np.mean(values)) if values else float("nan")


def run_proxies(model, tokenizer, pool, out_dir, *, B: int = 3, max_length=None, max_tokens_per_batch=None,
                progress: bool = True, command: str = "") -> dict:
    """Measures every method's cost and their agreement; writes the outputs into ``out_dir``."""
    from .scoring import score

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = model.get_output_embeddings().weight.device
    records = list(PoolReader(pool))
    opts = dict(max_length=max_length, max_tokens_per_batch=max_tokens_per_batch, progress=progress)
    costs, tables = [], {}

    def measure(name, fn):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            result = fn()
            sync(device)
            secs = time.perf_counter() - t0
        return result, secs, mem.mb

    warm = [{"problem_id": r.problem_id, "candidate_id": r.candidate_id, "teacher": r.teacher, "messages": r.messages}
            for r in records[:2]]
    score(model, tokenizer, warm, **{**opts, "progress": False})  # warm-up: kernels, allocator
    chat = ChatTokenizer(tokenizer, max_length=max_length or context_length(model))
    _, tok_secs, tok_mb = measure("length", lambda: [chat(r.messages) for r in records])
    for name, topk, extra in (("lark", 0, ()), ("fused", 50, ()), ("ifd", 0, ("ifd",)),
                              ("local_naturalness", 0, ("local_naturalness",))):
        table, secs, mb = measure(name, lambda: score(model, tokenizer, pool, topk=topk, methods=extra, **opts))
        tables[name] = (table, secs, mb)
    ref, ref_secs, ref_mb = measure("reference", lambda: reference_scores(model, tokenizer, records, max_length))

    fused, fused_secs, fused_mb = tables["fused"]
    n_tokens = int(fused["n_tokens"].sum())
    main_tokens = fused.info["forward_tokens"]

    def row(name, secs, mb, passes, note=""):
        return {"method": name, "passes": passes, "seconds": round(secs, 3),
                "tokens_per_s": round(n_tokens / secs, 1) if secs > 0 else float("inf"),
                "peak_mem_mb": round(mb, 1), "direction": ("higher" if METHODS[name].direction > 0 else "lower")
                if name in METHODS else "", "note": note}

    lark_table, lark_secs, lark_mb = tables["lark"]
    costs.append(row("lark", lark_secs, lark_mb, 1, "fused pass without top-K"))
    for name, m in METHODS.items():
        if m.cost == FUSED and name != "lark":
            costs.append(row(name, fused_secs, fused_mb, 1, "all single-pass methods in one fused pass"))
    costs.append(row("length", tok_secs, tok_mb, 0, "tokenisation only"))
    costs.append(row("random", tok_secs, tok_mb, 0, "tokenisation only (a seeded hash per candidate)"))
    for name in ("ifd", "local_naturalness"):
        t, secs, mb = tables[name]
        costs.append(row(name, secs, mb, round(t.info["forward_tokens"] / main_tokens, 2),
                         "fused pass + its own forwards"))
    costs.append(row("reference", ref_secs, ref_mb, 1, "published approach: batch 1, full fp32 logits, top-50 Brier"))
    for r in costs:
        r["time_vs_lark"] = round(r["seconds"] / lark_secs, 3)

    # agreement between the methods' selections, every score oriented so that higher is better
    combined = {c: fused[c] for c in fused.column_names}
    combined["ifd"] = tables["ifd"][0]["ifd"]
    combined["local_naturalness"] = tables["local_naturalness"][0]["local_naturalness"]
    combined["random"] = random_scores(fused["problem_id"], fused["candidate_id"])
    names = [name for name, m in METHODS.items() if m.cost != SKETCH]  # bench_sketch.py measures those
    scores = {name: ranking_score(combined, name) for name in names}
    pids = fused["problem_id"]
    corr = [[round(spearman_within_problems(pids, scores[a], scores[b]), 3) for b in names] for a in names]
    weights = {n: select(combined, B=B, by=n) for n in names}
    overlap = [[round(topb_overlap(pids, weights[a], weights[b]), 3) for b in names] for a in names]
    ok = fused["status"] == "ok"
    ref_corr = spearman_within_problems(pids[ok], -ref["L"], scores["global_naturalness"][ok])

    meta = {**machine(), "model": type(model).__name__, "device": str(device), "trajectories": len(fused),
            "scored_tokens": n_tokens}
    write_csv(out_dir / "costs.csv", costs, meta)
    write_csv(out_dir / "correlations.csv", [{"method": a, **dict(zip(names, r))} for a, r in zip(names, corr)])
    write_csv(out_dir / "overlap.csv", [{"method": a, **dict(zip(names, r))} for a, r in zip(names, overlap)])
    _plots(out_dir, costs, names, corr)
    fused_ratio = fused_secs / lark_secs
    (out_dir / "summary.md").write_text(_summary(costs, names, corr, overlap, meta, fused_ratio, ref_corr, B, command))
    return {"costs": costs, "correlations": corr, "overlap": overlap, "methods": names, "fused_vs_lark": fused_ratio,
            "meta": meta}


def _plots(out_dir: Path, costs, names, corr) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed (pip install 'lark_fast[bench]'): costs.png and correlations.png "
                      "were not written", stacklevel=2)
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([r["method"] for r in costs], [r["seconds"] for r in costs], color="#4c72b0")
    ax.set_xlabel("seconds (whole pool)")
    ax.set_title("cost of each selection proxy")
    fig.tight_layout()
    fig.savefig(out_dir / "costs.png", dpi=120)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(np.array(corr, dtype=float), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{corr[i][j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im)
    ax.set_title("Spearman correlation within problems (oriented: higher = better)")
    fig.tight_layout()
    fig.savefig(out_dir / "correlations.png", dpi=120)
    plt.close("all")


def _summary(costs, names, corr, overlap, meta, fused_ratio, ref_corr, B, command) -> str:
    lines = ["# Selection proxies: cost and agreement", "",
             f"`{command}`" if command else "", "",
             f"Machine: {meta['cpu']} ({meta['cores']} cores, {meta['torch_threads']} torch threads)"
             f"{', ' + meta['gpu'] if meta['gpu'] else ''}; git {meta['git']}; model {meta['model']} on "
             f"{meta['device']}; {meta['trajectories']} trajectories, {meta['scored_tokens']} scored tokens.", "",
             "| method | better | model passes | seconds | tokens/s | peak MB | time / lark | how |",
             "|---|---|---|---|---|---|---|---|"]
    for r in costs:
        lines.append(f"| {r['method']} | {r['direction']} | {r['passes']} | {r['seconds']} | {r['tokens_per_s']} | "
                     f"{r['peak_mem_mb']} | {r['time_vs_lark']} | {r['note']} |")
    lines += ["", f"All single-pass methods together cost {fused_ratio:.2f}x `lark` alone (one fused pass).",
              f"The reference's L agrees with ours: Spearman {ref_corr:.3f} within problems.", "",
              "Spearman correlation within problems (averaged over problems; every score oriented so that higher "
              "is better):", "", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(f"{v:.2f}" for v in r) + " |" for a, r in zip(names, corr)]
    lines += ["", f"Top-{B} overlap (share of the row method's selection that the column method also selects):", "",
              "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(f"{v:.2f}" for v in r) + " |" for a, r in zip(names, overlap)]
    return "\n".join(lines) + "\n"
