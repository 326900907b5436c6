"""Coming from the published LARK code, on the real SmolLM2-135M-Instruct student and CHAMP trajectories
(CPU): what `--compat published` reproduces and how far the exact default moves the selection.

1. `lark-fast score --compat published --format lark-json` writes the published score file;
2. `lark-fast select --scores scores.lark.json` and `--scores scores.parquet` write the same train.jsonl;
3. the exact default's ĝ (exact Brier) against the published one (top-50 Brier) on the same trajectories:
   SmolLM2's tokenizer adds no special tokens, so both tokenisations give the same ids (checked here) and
   the whole difference is the Brier.

Writes ``<out>.json`` (settings, machine, numbers).

    python examples/compat_published.py        # 16 minutes on 2 CPU cores shared with other jobs
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lark_fast.measure  # noqa: E402
from lark_fast.champ import champ_pool  # noqa: E402
from lark_fast.chat import ChatTokenizer, PublishedChatTokenizer  # noqa: E402
from lark_fast.cli import main  # noqa: E402
from lark_fast.demo import STUDENT_PACKAGE  # noqa: E402
from lark_fast.groups import group_offsets  # noqa: E402
from lark_fast.models import load_student  # noqa: E402
from lark_fast.rank_correlation import spearman_per_problem  # noqa: E402
from lark_fast.scores import lark_energy  # noqa: E402
from lark_fast.select import select  # noqa: E402
from lark_fast.table import ScoreTable, write_json, write_jsonl  # noqa: E402

HERE = Path(__file__).resolve().parent


def main_(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lark_compat_"))
    records = champ_pool(args.problems, [s.strip() for s in args.settings.split(",")])
    pool = work / "pool.jsonl"
    write_jsonl(pool, records)
    _, tokenizer = load_student(STUDENT_PACKAGE, "cpu", "float32")
    ours, theirs = (cls(tokenizer, max_length=args.max_length) for cls in (ChatTokenizer, PublishedChatTokenizer))
    same_ids = sum(a.input_ids == b.input_ids and a.start == b.start
                   for a, b in ((ours(r["messages"]), theirs(r["messages"])) for r in records))

    t0 = time.perf_counter()
    scores = work / "scores.parquet"
    assert main(["score", "--model", STUDENT_PACKAGE, "--input", str(pool), "--output", str(scores), "--compat",
                 "published", "--format", "lark-json", "--max-length", str(args.max_length), "--quiet"]) == 0
    seconds = time.perf_counter() - t0
    trains = {}
    for name, source in (("file", work / "scores.lark.json"), ("table", scores)):
        trains[name] = work / f"train_{name}.jsonl"
        assert main(["select", "--scores", str(source), "--input", str(pool), "--B", str(args.B), "--output",
                     str(trains[name])]) == 0

    table = ScoreTable.read(scores)
    ok = table["status"] == "ok"
    exact = lark_energy(table["problem_id"], table["L"], table["brier"], ok)
    w_pub = select(table, B=args.B)
    w_exact = select({**{c: table[c] for c in table.column_names}, "g_hat": exact}, B=args.B)
    order, offsets = group_offsets(table["problem_id"])
    same_set = sum(set(rows[w_pub[rows] > 0]) == set(rows[w_exact[rows] > 0])
                   for rows in (order[a:b] for a, b in zip(offsets[:-1], offsets[1:])))
    rhos = spearman_per_problem(table["problem_id"], table["g_hat"], exact)[1]
    rel = np.abs(table["brier_top50"] - table["brier"])[ok] / table["brier"][ok]
    return {
        "command": "python examples/compat_published.py", "problems": args.problems, "settings": args.settings,
        "B": args.B, "max_length": args.max_length, "trajectories": len(records),
        "scored": int(ok.sum()), "scoring_seconds": round(seconds, 1),
        "published_tokenisation_equals_template_ids": f"{same_ids} of {len(records)}",
        "train_jsonl_from_lark_json_equals_from_table": trains["file"].read_bytes() == trains["table"].read_bytes(),
        "brier_top50_vs_exact_relative_difference": {"median": float(np.median(rel)), "max": float(rel.max())},
        "g_hat_spearman_published_vs_exact_within_problem": {"mean": float(np.mean(rhos)), "min": float(np.min(rhos))},
        "problems_with_the_same_selected_set": f"{same_set} of {len(offsets) - 1}",
        "weight_moved_per_problem": float(np.abs(w_pub - w_exact).sum() / 2 / (len(offsets) - 1)),
        "machine": lark_fast.measure.machine(),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--settings", default="0-Shot,Direct C w/ H")
    p.add_argument("--B", type=int, default=3)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--output", default=str(HERE / "compat_published"))
    args = p.parse_args()
    result = main_(args)
    write_json(Path(args.output).with_suffix(".json"), result)
    print(json.dumps(result, indent=2))
