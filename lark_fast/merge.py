"""``lark-fast merge PARTS... --output scores.parquet``: the score table of a sharded run (docs/method.md §11).

The parts (``lark-fast score --shard I/N``, see ``lark_fast.shards``) must come from one run (same
settings: model, pool, options; same N), hold every shard exactly once and between them every valid
record of the pool exactly once; otherwise nothing is written and the error names what is missing,
duplicated or foreign. The per-problem columns (ĝ, ...) are computed after the merge, by the same
``scoring.build_table`` as a single-process run.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from .checkpoint import concat
from .scoring import build_table
from .shards import read_part
from .table import ScoreTable


class MergeError(ValueError):
    """Parts that do not make one complete run."""


def merge_parts(paths) -> ScoreTable:
    """The score table of the shard parts at ``paths``; MergeError when they are not exactly one run's
    shards, each once."""
    if not paths:
        raise MergeError("no parts given")
    parts = [read_part(p) for p in paths]
    first = parts[0]
    for p in parts[1:]:
        differ = sorted(k for k in set(first.run) | set(p.run) if first.run.get(k) != p.run.get(k))
        if differ:
            raise MergeError(f"{p.path} comes from another run than {first.path} ({', '.join(differ)} differ); "
                             "merge the parts of one run")
    count = first.meta["count"]
    by_shard = collections.defaultdict(list)
    for p in parts:
        by_shard[p.shard[0]].append(str(p.path))
    problems = [f"shard {i}/{count} given {len(v)} times ({', '.join(v)})" for i, v in sorted(by_shard.items())
                if len(v) > 1]
    absent = [i for i in range(count) if i not in by_shard]
    if absent:
        problems.append(f"shard{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))} of {count} missing "
                        f"(run `lark-fast score --shard I/{count}` for {'them' if len(absent) > 1 else 'it'})")
    if problems:
        raise MergeError("; ".join(problems))
    cols = concat([p.columns for p in parts])
    ordinals, n = cols["ordinal"], first.meta["pool_records"]
    counts = np.bincount(ordinals, minlength=n) if len(ordinals) else np.zeros(n, np.int64)
    if len(counts) > n or (counts != 1).any():
        raise MergeError(f"the parts do not cover the pool's {n} records exactly once: "
                         f"{int((counts[:n] == 0).sum())} missing, {int((counts > 1).sum())} duplicated, "
                         f"{len(counts) - n if len(counts) > n else 0} out of range")
    order = np.argsort(ordinals, kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    options = first.meta["table"]
    infos = [p.meta["info"] for p in parts]
    info = {**infos[0], "seconds": sum(i["seconds"] for i in infos),
            "scored_tokens_this_run": sum(i["scored_tokens_this_run"] for i in infos),
            "forward_tokens": sum(i["forward_tokens"] for i in infos), "shard": None, "shards": count,
            "complete": all(p.meta["complete"] for p in parts),
            "records_resumed": sum(i["records_resumed"] for i in infos)}
    return build_table(cols, options["topk"], first.issues(), info, tuple(options["methods"]), options["random_seed"],
                       compat=options.get("compat", "exact"))


def cmd_merge(args) -> int:
    from .fingerprint import file_sha256
    from .report import manifest_path, report_issues, scores_manifest, summarize_scores, utc_now
    from .table import check_output, remove_stale_temporaries, write_json

    started = utc_now()
    man = manifest_path(args.output)
    for path in (Path(args.output), man):
        check_output(path)
        remove_stale_temporaries(path.parent, path.name)
    table = merge_parts(args.parts)
    report_issues(table.issues)
    table.write(args.output)
    write_json(man, scores_manifest("merge", table, [args.output], started,
                                    {"parts": {str(p): file_sha256(p) for p in args.parts}},
                                    parts=[str(p) for p in args.parts]))
    for line in summarize_scores(table):
        print(line)
    print(f"merged {len(args.parts)} parts ({len(table)} records); wrote {args.output}, {man}")
    return 0 if table.info["complete"] else 3


def add_parser(sub) -> None:
    s = sub.add_parser("merge", help="the score table of the parts of `lark-fast score --shard I/N` runs",
                       epilog="exit status: 0 done; 2 the parts are not one run's shards, each once (the error names "
                              "the missing, duplicated or foreign parts), or a part is corrupt; 3 the pool could not "
                              "be read to its end")
    s.add_argument("parts", nargs="+", help="the shards' parts (Parquet)")
    s.add_argument("--output", required=True, help="score table (.parquet or .jsonl)")
    s.set_defaults(func=cmd_merge)

