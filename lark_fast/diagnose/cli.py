"""``lark-fast diagnose utility | loss-curves``."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

SCORED_METHODS = ("ifd", "random")
GRADIENT_METHODS = ("lark_grad", "rho_grad")


def _command() -> str:
    return "lark-fast " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("lark-fast") else ""


def _records(path) -> list:
    from ..pool import PoolReader
    from ..report import report_issues
    reader = PoolReader(path)
    records = [{"problem_id": r.problem_id, "candidate_id": r.candidate_id, "teacher": r.teacher,
                "messages": r.messages} for r in reader]
    report_issues(reader.issues)
    return records


def _scores(args, model, tokenizer, records):
    """The score table of --scores, else the pool scored here with the proxies the diagnostics compare
    (written to <output>/scores.parquet)."""
    from ..scoring import score
    from ..table import ScoreTable

    if args.scores:
        return ScoreTable.read(args.scores)
    sketch = getattr(args, "sketch_dim", 0)
    methods = SCORED_METHODS + (GRADIENT_METHODS if sketch else ())
    print(f"scoring {len(records)} trajectories with {', '.join(('lark', 'rsr', 'rho') + methods)}", flush=True)
    table = score(model, tokenizer, records, max_length=args.max_length, batch_size=args.batch_size,
                  max_tokens_per_batch=args.max_tokens_per_batch, topk=0, methods=methods,
                  sketch_dim=sketch or None, progress=not args.quiet)
    table.write(Path(args.output) / "scores.parquet")
    return table


def _finish(args, name: str, summary: dict) -> None:
    from ..measure import machine
    from ..report import versions
    from ..table import write_json
    out = Path(args.output)
    write_json(out / f"{name}.json", {"command": _command(), "options": {k: v for k, v in vars(args).items()
                                                                         if k != "func"},
                                      **summary, "machine": machine(), "versions": versions()})
    if not args.keep_parts:
        shutil.rmtree(out / f"{name}.parts", ignore_errors=True)


def cmd_utility(args) -> int:
    from ..measure import write_csv
    from ..models import load_student
    from .utility import measure_utility, plot_correlations, proxy_correlations, sample_problems

    out = Path(args.output)
    records = _records(args.input)
    model, tokenizer = load_student(args.model, args.device, args.dtype)
    table = _scores(args, model, tokenizer, records)
    problems = sample_problems(table, args.problems, args.seed)
    if args.heldout:
        heldout = _records(args.heldout)
    else:
        sampled = set(problems)
        others = [r for r in records if r["problem_id"] not in sampled]
        if not others:
            raise ValueError("every pool problem is sampled, none is left for the held-out loss; pass --heldout "
                             "or fewer --problems")
        pick = np.random.default_rng(args.seed).choice(len(others), size=min(args.heldout_size, len(others)),
                                                      replace=False)
        heldout = [others[i] for i in sorted(pick)]
    print(f"utility of the candidates of {len(problems)} problems: {args.steps} SGD step(s) at lr {args.lr} each, "
          f"held-out loss over {len(heldout)} trajectories", flush=True)
    result = measure_utility(model, tokenizer, records, table, heldout, problems=problems, steps=args.steps,
                             lr=args.lr, max_length=args.max_length, max_tokens_per_batch=args.max_tokens_per_batch,
                             seed=args.seed, run_dir=out / "utility.parts", overwrite=args.overwrite,
                             progress=not args.quiet)
    correlations = proxy_correlations(result["candidates"], table, resamples=args.bootstrap, seed=args.seed)
    write_csv(out / "candidates.csv", result["candidates"])
    write_csv(out / "correlations.csv", [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                                         for r in correlations])
    utilities = np.array([c["utility"] for c in result["candidates"]])
    title = (f"{len(problems)} problems, {len(utilities)} candidates; utility = held-out loss drop after "
             f"{args.steps} SGD step(s), lr {args.lr}")
    plot_correlations(correlations, out / "utility.png", title)
    _finish(args, "utility", {"problems": problems, "heldout_trajectories": len(heldout),
                              "heldout_before": result["heldout_before"], "seconds": round(result["seconds"], 1),
                              "utility": {"mean": float(utilities.mean()), "min": float(utilities.min()),
                                          "max": float(utilities.max())}, "correlations": correlations})
    print(f"held-out loss {result['heldout_before']:.4f}; utility per candidate: mean {utilities.mean():.2e}, "
          f"range [{utilities.min():.2e}, {utilities.max():.2e}]")
    print(f"{'proxy':<19} {'better':<7} {'Spearman':>9}  95% interval      problems (> 0)")
    for r in correlations:
        print(f"{r['proxy']:<19} {r['better']:<7} {r['spearman']:>9.3f}  [{r['ci_low']:6.3f}, {r['ci_high']:6.3f}]  "
              f"{r['problems']} ({r['positive_problems']})")
    print(f"wrote {out}/candidates.csv, correlations.csv, utility.json, utility.png")
    return 0


def cmd_loss_curves(args) -> int:
    from ..measure import write_csv
    from ..models import load_student
    from .heldout import heldout_problems
    from .curves import loss_curves, plot_loss_curves

    out = Path(args.output)
    records = _records(args.input)
    if args.heldout:
        train, heldout = records, _records(args.heldout)
    else:
        held = heldout_problems([r["problem_id"] for r in records], args.heldout_problems, args.seed)
        train = [r for r in records if r["problem_id"] not in held]
        heldout = [r for r in records if r["problem_id"] in held]
    model, tokenizer = load_student(args.model, args.device, args.dtype)
    table = _scores(args, model, tokenizer, records)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    print(f"{len(arms)} arms x {args.steps} steps on {len(train)} training trajectories; held-out loss over "
          f"{len(heldout)} trajectories every {args.eval_every} steps", flush=True)
    result = loss_curves(model, tokenizer, train, table, heldout, arms=arms, B=args.B, steps=args.steps, lr=args.lr,
                         optim=args.optim, eval_every=args.eval_every, max_length=args.max_length,
                         max_tokens_per_batch=args.max_tokens_per_batch, seed=args.seed,
                         run_dir=out / "loss_curves.parts", overwrite=args.overwrite, save_models=args.save_models,
                         progress=not args.quiet)
    rows = result["rows"]
    write_csv(out / "loss_curves.csv", [{k: "" if v is None else round(v, 6) if isinstance(v, float) else v
                                        for k, v in r.items()} for r in rows])
    plot_loss_curves(rows, out / "loss_curves.png", f"B={args.B}, {args.steps} steps, lr {args.lr} ({args.optim}); "
                     f"{len(train)} training / {len(heldout)} held-out trajectories")
    final = {a: [r["heldout_loss"] for r in rows if r["arm"] == a and r["heldout_loss"] is not None][-1] for a in arms}
    _finish(args, "loss_curves", {"train_trajectories": len(train), "heldout_trajectories": len(heldout),
                                  "selected": result["selected"], "train_seconds": result["seconds"],
                                  "heldout_start": rows[0]["heldout_loss"], "heldout_final": final})
    for a in arms:
        print(f"{a:<10} held-out loss {rows[0]['heldout_loss']:.4f} -> {final[a]:.4f} "
              f"({result['selected'][a]} trajectories selected)")
    print(f"wrote {out}/loss_curves.csv, loss_curves.json, loss_curves.png")
    return 0


def add_parser(sub, model_flags) -> None:
    """Registers ``diagnose`` and its subcommands on the top-level subparsers (``model_flags`` adds
    --max-length, --device, --dtype, --max-tokens-per-batch, --batch-size)."""
    from .curves import ARMS

    d = sub.add_parser("diagnose", help="does the LARK score predict training utility on your student and pool?")
    dg = d.add_subparsers(dest="diagnose", required=True)

    def common(s):
        s.add_argument("--model", required=True, help="the student: model directory, .gguf file or package")
        s.add_argument("--input", required=True, help="the candidate pool (.jsonl, .jsonl.gz or .parquet)")
        s.add_argument("--scores", default=None, help="its score table (default: scored here with the proxies "
                       "compared, written to OUTPUT/scores.parquet)")
        s.add_argument("--heldout", default=None, help="pool of held-out trajectories for the held-out loss")
        s.add_argument("--output", required=True, help="directory for the CSV, JSON and plot")
        s.add_argument("--seed", type=int, default=0, help="seeds every draw of the run (default 0)")
        s.add_argument("--overwrite", action="store_true", help="start over instead of resuming an earlier run")
        s.add_argument("--keep-parts", action="store_true", help="keep the checkpoint parts after the run")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        model_flags(s)

    s = dg.add_parser("utility", help="per candidate: held-out loss drop after SGD on it alone; Spearman of each "
                      "proxy with it, within problems, with bootstrap intervals")
    common(s)
    s.add_argument("--problems", type=int, default=8, help="problems sampled (default 8; >= 3 scored candidates)")
    s.add_argument("--steps", type=int, default=1, help="SGD steps on each candidate (default 1)")
    s.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (default 1e-3)")
    s.add_argument("--heldout-size", type=int, default=16,
                   help="without --heldout: this many trajectories of the other problems (default 16)")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the problems (default 1000)")
    s.add_argument("--sketch-dim", type=int, default=16,
                   help="when scoring here: sketch size for the gradient proxies lark_grad, rho_grad (0 = leave "
                        "them out; docs/method.md §4)")
    s.set_defaults(func=cmd_utility)

    s = dg.add_parser("loss-curves", help="SFT on each method's top-B selection from the same start: training and "
                      "held-out loss per step")
    common(s)
    s.add_argument("--heldout-problems", type=int, default=4,
                   help="without --heldout: hold out this many pool problems (default 4)")
    s.add_argument("--arms", default=",".join(ARMS),
                   help=f"comma-separated (default {','.join(ARMS)}): lark = LARK weights, uniform = the same top-B "
                        "at 1/B, any other method name = its top-B at 1/B")
    s.add_argument("--B", type=int, default=3, help="trajectories per problem (default 3)")
    s.add_argument("--steps", type=int, default=8, help="optimizer steps per arm, one problem each (default 8)")
    s.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5, constant)")
    s.add_argument("--optim", default="adamw_torch", help="transformers optimizer name (default adamw_torch)")
    s.add_argument("--eval-every", type=int, default=2, help="held-out loss every N steps and at the last (default 2)")
    s.add_argument("--save-models", default=None, metavar="DIR", help="save each arm's final student to DIR/<arm>")
    s.set_defaults(func=cmd_loss_curves)
