"""Cost of per-trajectory gradient sketches, side by side on the same model and pool:

  forward           lark_fast's scoring pass: packed rows, fused LM-head statistics, no graph
  forward_backward  the same rows + one activation-gradient backward of sum_k L_k (parameters frozen,
                    the head's backward recomputes logits tile by tile), no sketch
  sketch            forward_backward + Kronecker sketches of every linear layer and the LM head
                    (``Scorer(sketch_dim=k)``, what ``lark-fast score --sketch-dim k`` runs)
  sketch_head       the LM head's sketch alone: forward only, from the statistics' vocabulary sweep
  less              LESS-style baseline: one trajectory per forward/backward through the model's own
                    logits, the full per-example weight gradient of the same layers, then the same
                    projections (P_out G P_in^T per layer)
All providers see the same pre-tokenised trajectories and the same FFD rows, and run row by row in
turn (the order rotating from row to row), so that a machine shared with other jobs slows them alike;
times cover the model work only. Ratios: sketch / forward_backward (the sketches' overhead; target <= 1.15 on a GPU) and
less / sketch (trajectories/s of sketch over the baseline; target >= 10x).

Then ``lark_fast.score(..., sketch_dim=k)`` scores the pool end to end and the script reports how κ =
||grad L||^2 / brier (docs/method.md §4) varies across trajectories and within problems, how g_hat_grad ranks
against g_hat, and (``--exact N``) the sketch's error against exact norms on N trajectories.

    python benchmarks/bench_sketch.py                          # SmolLM2 + CHAMP on CPU
    python benchmarks/bench_sketch.py --device cuda --shape qwen2.5-0.5b --input pool.jsonl --tokenizer DIR
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, PeakMemory, add_model_args, build_model, load_records, machine, sync,  # noqa: E402
                    write_csv)

import lark_fast  # noqa: E402
from lark_fast.proxy_bench import spearman_within_problems, topb_overlap  # noqa: E402
from lark_fast.kernels.sketch import IN, OUT, projection_key, signs  # noqa: E402
from lark_fast.packing import pack_ffd  # noqa: E402
from lark_fast.scorer import Scorer, eval_mode  # noqa: E402
from lark_fast.scores import gradient_energy  # noqa: E402
from lark_fast.sketch import frozen  # noqa: E402
from lark_fast.groups import group_offsets  # noqa: E402



def rows_of(toks, capacity):
    return [[toks[i] for i in row] for row in pack_ffd([len(t.input_ids) for t in toks], capacity)]


def forward_backward(scorer: Scorer, items):
    """The activation backward alone: what sketch adds hooks and projections to."""
    lay = scorer.layout(items)
    with frozen(scorer.model), torch.enable_grad(), eval_mode(scorer.model):
        hidden, targets = scorer.head_inputs(lay)
        stats = scorer.head.stats(hidden, targets, lay.cu_scored, backend=scorer.backend)
        stats.nll.sum().backward()  # as the sketch path: weight 1 per token, 1 / n_k applied afterwards


def dense_gradients(model, toks, layers):
    """Per trajectory (one forward + backward each, through the model's own logits), the list of its
    layers' weight gradients G = [dW | db] (d_out x d_in) of its mean nll. A head tied to the input
    embeddings gets a copy of the weight meanwhile, so that G is the head's own use, as sketched."""
    head = next(la.module for la in layers if la.is_head)
    tied = head.weight is model.get_input_embeddings().weight
    shared = head.weight
    if tied:
        head.weight = torch.nn.Parameter(shared.detach().clone())
    params = [[la.module.weight] + ([la.module.bias] if la.bias else []) for la in layers]
    flat = [p for ps in params for p in ps]
    before = [p.requires_grad for p in flat]
    try:
        for p in flat:
            p.requires_grad_(True)
        with eval_mode(model):
            for t in toks:
                ids = torch.tensor([t.input_ids], device=model.device)
                logits = model(input_ids=ids, use_cache=False).logits[0, t.start - 1:-1]
                loss = torch.nn.functional.cross_entropy(logits.float(), ids[0, t.start:])
                grads = iter(torch.autograd.grad(loss, flat))
                out = []
                for la, ps in zip(layers, params):
                    g = next(grads)
                    g = g.T if type(la.module).__name__ == "Conv1D" else g
                    out.append(torch.cat([g, next(grads)[:, None]], 1) if la.bias else g)
                yield out
    finally:
        for p, r in zip(flat, before):
            p.requires_grad_(r)
        if tied:
            head.weight = shared


def less_style(model, toks, layers, k):
    """LESS-style: full per-example weight gradients, then P_out G P_in^T per layer."""
    proj, out = {}, []
    for grads in dense_gradients(model, toks, layers):
        sketch = []
        for la, g in zip(layers, grads):
            if la.name not in proj:
                proj[la.name] = tuple(signs(projection_key(0, la.name, side), k, dim, g.device, g.dtype) / k ** 0.5
                                      for side, dim in ((OUT, la.d_out), (IN, la.d_in)))
            p_out, p_in = proj[la.name]
            sketch.append((p_out @ g @ p_in.T).flatten())
        out.append(torch.cat(sketch).float().cpu())
    return out


def exact_grams(model, tokenizer, recs, layers, max_length) -> list:
    """(indices, exact Gram matrix) per problem of ``recs``: inner products of the dense gradients."""
    chat = Scorer(model, tokenizer, max_length=max_length, topk=0).chat
    pids = np.array([r["problem_id"] for r in recs])
    out = []
    order, offsets = group_offsets(pids)
    for a, b in zip(offsets[:-1], offsets[1:]):
        idx = order[a:b]
        grads = list(dense_gradients(model, [chat(recs[i]["messages"]) for i in idx], layers))
        gram = np.array([[sum(float((x.double() * y.double()).sum()) for x, y in zip(gi, gj)) for gj in grads]
                         for gi in grads])
        out.append((idx, gram))
    return out


def kappa_report(table, B: int) -> dict:
    ok = (table["status"] == "ok") & np.isfinite(table["kappa"])
    kappa = table["kappa"][ok]
    pids = np.asarray(table["problem_id"])[ok]
    order, offsets = group_offsets(pids)
    n_tokens = np.asarray(table["n_tokens"], dtype=np.float64)[ok]
    per_n = kappa * n_tokens  # ||grad L||^2 / (brier / n): against the logit-level norm of the same mean loss

    def within(x):  # median over problems of max / min
        ratios = [x[order[a:b]].max() / x[order[a:b]].min() for a, b in zip(offsets[:-1], offsets[1:]) if b - a > 1]
        return float(np.median(ratios)) if ratios else float("nan")

    pid_all = np.asarray(table["problem_id"])
    w_lark = lark_fast.select(table, B=B, by="lark")
    w_grad = lark_fast.select(table, B=B, by="lark_grad")
    q = np.quantile(kappa, [0, 0.1, 0.5, 0.9, 1])
    return {"trajectories": int(ok.sum()), "problems": int(len(offsets) - 1),
            "kappa_min": q[0], "kappa_p10": q[1], "kappa_median": q[2], "kappa_p90": q[3], "kappa_max": q[4],
            "kappa_max_over_min": q[4] / q[0], "kappa_p90_over_p10": q[3] / q[1],
            "kappa_within_problem_max_over_min_median": within(kappa),
            "spearman_kappa_vs_brier": spearman_within_problems(pids, kappa, table["brier"][ok]),
            "spearman_kappa_vs_n_tokens": spearman_within_problems(pids, kappa, n_tokens),
            "kappa_log_slope_vs_n_tokens": float(np.polyfit(np.log(n_tokens), np.log(kappa), 1)[0]),
            "kappa_times_n_max_over_min": float(per_n.max() / per_n.min()),
            "kappa_times_n_within_problem_max_over_min_median": within(per_n),
            "spearman_g_hat_vs_g_hat_grad": spearman_within_problems(pid_all, table["g_hat"], table["g_hat_grad"]),
            "spearman_rho_vs_rho_grad": spearman_within_problems(pid_all, table["rho"], table["rho_grad"]),
            f"top{B}_overlap_lark_vs_lark_grad": topb_overlap(pid_all, w_lark, w_grad)}


def time_providers(args, model, tokenizer, plain, sketcher, head_only, recs) -> list:
    """Each provider on every FFD row of ``recs``, in turn; their timing rows."""
    toks = [t for t in (plain.chat(r["messages"]) for r in recs) if t.status == "ok" and t.n_scored > 0]
    rows = rows_of(toks, args.max_tokens_per_batch)
    n_scored = sum(t.n_scored for t in toks)
    methods = {
        "forward": plain.score_batch,
        "forward_backward": lambda row: forward_backward(plain, row),
        "sketch": sketcher.score_batch,
        "sketch_head": head_only.score_batch,
        "less": lambda row: less_style(model, row, sketcher.sketcher.layers, args.k),
    }
    wanted = [m for m in args.methods.split(",") if m]
    for name in wanted:  # warm-up on a full row: the first large backward pays the allocator's page faults
        methods[name](rows[0])
    results = {name: [] for name in wanted}
    secs, peak = dict.fromkeys(wanted, 0.0), dict.fromkeys(wanted, 0.0)
    for i, row in enumerate(rows):
        for name in wanted[i % len(wanted):] + wanted[:i % len(wanted)]:
            with PeakMemory(args.device) as mem:
                t0 = time.perf_counter()
                results[name].append(methods[name](row))
                sync(args.device)
                secs[name] += time.perf_counter() - t0
            peak[name] = max(peak[name], mem.mb)
        print(f"row {i + 1}/{len(rows)}: " + ", ".join(f"{n} {secs[n]:.1f} s" for n in wanted), flush=True)
    timing = [{"method": name, "seconds": round(secs[name], 3), "trajectories": len(toks),
               "trajectories_per_s": round(len(toks) / secs[name], 3), "scored_tokens": n_scored,
               "tokens_per_s": round(n_scored / secs[name], 1), "peak_mem_mb": round(peak[name], 1)} for name in wanted]
    by = {r["method"]: r["seconds"] for r in timing}
    for r in timing:
        for base in ("forward_backward", "sketch"):
            if base in by:
                r[f"time_vs_{base}"] = round(r["seconds"] / by[base], 3)
    if "sketch" in results and "less" in results:  # same projections of the same gradients: they must agree
        ours = np.concatenate([b["sketch"] for b in results["sketch"]])
        theirs = np.stack([s.numpy() for row in results["less"] for s in row])
        rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
        print(f"sketch vs less-style projections of full gradients: relative difference {rel:.2e}")
    for a, b in (("sketch", "forward_backward"), ("forward_backward", "forward"), ("sketch", "forward"),
                 ("less", "sketch"), ("sketch_head", "forward")):
        if a in by and b in by:
            print(f"{a} / {b} time: {by[a] / by[b]:.3f}x")
    return timing


def validate(args, model, tokenizer, recs, layers, kappa_k, common) -> dict:
    """Sketches against exact norms and exact per-problem Gram matrices on ``recs``."""
    ex = lark_fast.score(model, tokenizer, recs, sketch_dim=kappa_k, exact_grad_norm=True, progress=False,
                         max_tokens_per_batch=1024, **common)
    report = {"exact_trajectories": len(recs)}
    for k in sorted({args.k, kappa_k}):
        est = ex["grad_norm_sq"] if k == kappa_k else lark_fast.score(
            model, tokenizer, recs, sketch_dim=k, progress=False, max_tokens_per_batch=1024, **common)["grad_norm_sq"]
        rel = np.abs(est / ex["grad_norm_sq_exact"] - 1)
        report.update({f"k{k}_rel_err_mean_abs": float(rel.mean()), f"k{k}_rel_err_max_abs": float(rel.max())})
    kx = ex["grad_norm_sq_exact"] / ex["brier"]
    report["exact_kappa_max_over_min"] = float(kx.max() / kx.min())
    g_exact, cos = np.full(len(recs), np.nan), []
    for idx, gram in exact_grams(model, tokenizer, recs, layers, args.max_length):
        g_exact[idx] = gradient_energy(ex["L"][idx], gram)
        norm = np.sqrt(np.diag(gram))
        cos += (gram / np.outer(norm, norm))[np.triu_indices(len(idx), 1)].tolist()
        np.testing.assert_allclose(np.diag(gram), ex["grad_norm_sq_exact"][idx], rtol=1e-3)  # two exact paths agree
    report.update({"exact_within_problem_gradient_cosine_mean": float(np.mean(cos)),
                   "exact_within_problem_gradient_cosine_min": float(np.min(cos)),
                   f"g_hat_grad_k{kappa_k}_max_abs_err_over_exact_range":
                       float(np.abs(ex["g_hat_grad"] - g_exact).max() / np.ptp(g_exact)),
                   "spearman_g_hat_vs_exact_g_hat_grad": spearman_within_problems(ex["problem_id"], ex["g_hat"],
                                                                                   g_exact),
                   f"spearman_g_hat_grad_k{kappa_k}_vs_exact": spearman_within_problems(ex["problem_id"],
                                                                                        ex["g_hat_grad"], g_exact)})
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, problems=6)
    p.add_argument("--k", type=int, default=16, help="sketch size per side (k x k per layer)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-tokens-per-batch", type=int, default=4096)
    p.add_argument("--methods", default="forward,forward_backward,sketch,sketch_head,less",
                   help="providers to time, in turn row by row ('' = none: only the κ run)")
    p.add_argument("--no-kappa", action="store_true", help="time the providers only (no end-to-end κ run)")
    p.add_argument("--kappa-problems", type=int, default=None,
                   help="CHAMP problems of the end-to-end κ run (default: --problems; --input: the whole pool)")
    p.add_argument("--kappa-k", type=int, default=None, help="sketch size of the κ run (default: --k)")
    p.add_argument("--exact", type=int, default=0,
                   help="validate the sketches (sizes --k and --kappa-k) on the first N trajectories of the κ run, "
                        "with exact norms and exact per-problem Gram matrices")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--output", default="bench_sketch")
    args = p.parse_args()

    model, tokenizer = build_model(args)
    common = dict(max_length=args.max_length, topk=0)
    plain = Scorer(model, tokenizer, **common)
    sketcher = Scorer(model, tokenizer, sketch_dim=args.k, **common)
    head_only = Scorer(model, tokenizer, sketch_dim=args.k, sketch_layers="head", **common)
    meta = {**machine(), "model": args.shape or args.model, "device": args.device, "dtype": str(next(model.parameters()).dtype),
            "k": args.k, "layers": len(sketcher.sketcher.layers), "problems": args.problems,
            "settings": args.settings}
    if args.methods:
        timing = time_providers(args, model, tokenizer, plain, sketcher, head_only, load_records(args))
        write_csv(RESULTS / f"{args.output}.csv", timing, meta)

    if args.no_kappa:
        return
    kappa_recs = load_records(args, args.kappa_problems)
    kappa_k = args.kappa_k or args.k
    t0 = time.perf_counter()
    table = lark_fast.score(model, tokenizer, kappa_recs, sketch_dim=kappa_k,
                            max_tokens_per_batch=args.max_tokens_per_batch, progress=False, **common)
    report = {"kappa_k": kappa_k, "kappa_problems": args.kappa_problems or args.problems,
              "score_seconds": round(time.perf_counter() - t0, 1), **kappa_report(table, args.B)}
    if args.exact:
        sub = [r for r, s in zip(kappa_recs, table["status"]) if s == "ok"][:args.exact]
        report.update(validate(args, model, tokenizer, sub, sketcher.sketcher.layers, kappa_k, common))
    report = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()}
    (RESULTS / f"{args.output}_kappa.json").write_text(json.dumps({**meta, **report}, indent=2) + "\n")
    cols = ["problem_id", "candidate_id", "teacher", "n_tokens", "L", "brier", "rho", "g_hat", "grad_norm_sq",
            "rho_grad", "kappa", "g_hat_grad"]
    write_csv(RESULTS / f"{args.output}_trajectories.csv", [{c: r[c] for c in cols} for r in table.rows()], meta)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
