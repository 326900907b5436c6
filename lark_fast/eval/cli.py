"""``lark-fast eval generate | grade | report``."""
from __future__ import annotations

from pathlib import Path


def cmd_generate(args) -> int:
    from ..pool import PoolReader
    from .benchmark import read_benchmark
    from .generation import generate

    exclude = {r.problem_id for path in args.exclude for r in PoolReader(path)}
    items = [it for b in args.benchmark for it in read_benchmark(b, family=args.family, exclude=exclude)]
    if args.limit is not None:
        items = items[: args.limit]
    template = Path(args.chat_template).read_text(encoding="utf-8") if args.chat_template else None
    print(f"{len(items)} problems from {', '.join(args.benchmark)}"
          + (f" ({len(exclude)} pool problems excluded)" if exclude else "") + f", k = {args.k}")
    s = generate(args.model, items, args.output, label=args.label or Path(str(args.model)).name, k=args.k,
                 temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                 batch_size=args.batch_size, seed=args.seed, system_prompt=args.system_prompt, chat_template=template,
                 backend=args.backend, device=args.device, dtype=args.dtype, overwrite=args.overwrite,
                 keep_parts=args.keep_parts, progress=not args.quiet)
    if s["batches_resumed"]:
        print(f"resumed: {s['batches_resumed']} of {s['batches']} batches were already done")
    print(f"{s['samples']} samples, {s['generated_tokens']} generated tokens ({s['cut_at_max_new_tokens']} samples cut "
          f"at --max-new-tokens); {s['seconds']} s this run ({s['backend']}); wrote {args.output}")
    return 0


def cmd_grade(args) -> int:
    from .grade import grade_file
    s = grade_file(args.samples, args.output, grader=args.grader, progress=not args.quiet)
    print(f"{s['correct']} of {s['samples']} samples correct ({s['grader']}); {s['without_boxed_answer']} without "
          f"a boxed answer; wrote {args.output}")
    return 0


def cmd_report(args) -> int:
    from .report import markdown, write_report
    ks = [int(k) for k in args.pass_k.split(",")] if args.pass_k else None
    table = write_report(args.graded, args.output, pass_ks=ks)
    print(markdown(table), end="")
    print(f"wrote {args.output}/report.csv, report.md, report.png")
    return 0


def add_parser(sub) -> None:
    """Registers ``eval`` and its subcommands on the top-level subparsers."""
    from .benchmark import SYSTEM_PROMPTS
    from .generation import BACKENDS
    from .grade import GRADERS

    e = sub.add_parser("eval", help="evaluate a student: sample answers to benchmark problems, grade, report")
    ev = e.add_subparsers(dest="eval", required=True)
    s = ev.add_parser("generate", help="k sampled completions per benchmark problem (checkpointed; a rerun resumes)")
    s.add_argument("--model", required=True, help="model directory, .gguf file, or installed package shipping one")
    s.add_argument("--benchmark", required=True, action="append",
                   help="problems with gold answers: .jsonl, .json or .parquet with problem (or prompt) and answer; "
                        "'champ' = CHAMP from champ-dataset (repeatable)")
    s.add_argument("--output", required=True, help="samples (.jsonl)")
    s.add_argument("--label", default=None, help="name of this model in the report (default: the model's name)")
    s.add_argument("--k", type=int, default=5, help="samples per problem (default 5)")
    s.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy, needs --k 1)")
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--max-new-tokens", type=int, default=2048)
    s.add_argument("--batch-size", type=int, default=32, help="sequences per generate call and per checkpoint")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--family", default="math", choices=list(SYSTEM_PROMPTS),
                   help="system prompt of benchmarks whose rows name no family (default math: reason step by "
                        "step, final answer in \\boxed{})")
    s.add_argument("--system-prompt", default=None, help="this system prompt instead ('' = none)")
    s.add_argument("--chat-template", default=None, help="Jinja chat template file overriding the tokenizer's")
    s.add_argument("--exclude", action="append", default=[], metavar="POOL",
                   help="leave out the problems of this pool (e.g. the training pool: held-out problems only)")
    s.add_argument("--limit", type=int, default=None, help="at most this many problems")
    s.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): vLLM when installed and on a GPU, else transformers' generate")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    s.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    s.add_argument("--overwrite", action="store_true", help="discard the parts of an earlier run instead of resuming")
    s.add_argument("--keep-parts", action="store_true", help="keep <output>.parts/ after the samples are written")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_generate)

    s = ev.add_parser("grade", help="grade each sample's last boxed answer against the gold answer")
    s.add_argument("--samples", required=True, help="eval generate's output")
    s.add_argument("--output", required=True, help="graded samples (.jsonl)")
    s.add_argument("--grader", choices=GRADERS, default="auto",
                   help="auto (default): math-verify when installed, else normalised exact match; exact; math-verify")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_grade)

    s = ev.add_parser("report", help="ACC@k and pass@k per benchmark and label: CSV, markdown, bar plot")
    s.add_argument("graded", nargs="+", help="graded sample files (eval grade's outputs, one per model)")
    s.add_argument("--output", required=True, help="directory for report.csv, report.md, report.png")
    s.add_argument("--pass-k", default=None,
                   help="comma-separated k of pass@k (default: 1 and the samples per problem)")
    s.set_defaults(func=cmd_report)
