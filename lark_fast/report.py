"""Reporting: what the commands print and write next to their outputs (summaries, manifests); the
published scorer's lark-json layout is in ``lark_json``."""
from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .groups import group_offsets
from .select import as_table

MAX_ISSUES_SHOWN = 20


def manifest_path(output) -> Path:
    """``scores.parquet`` -> ``scores.manifest.json``."""
    p = Path(output)
    name = p.name[: -len(".gz")] if p.name.endswith(".gz") else p.name
    return p.with_name(name.rsplit(".", 1)[0] + ".manifest.json")


def utc_now() -> str:
    """The time of day for manifests: ISO 8601, UTC, to the second."""
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    import platform

    import torch
    import transformers

    from . import __version__
    return {"lark_fast": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def scores_manifest(command: str, table, outputs, started: str, sha256: Optional[dict] = None, **fields) -> dict:
    """The manifest of a command that wrote a score table: ``fields`` (input, model, options, ...), the
    times, the sha256 of ``sha256``'s inputs and of every output, the table's info, bad records and
    status counts, and the versions."""
    from .fingerprint import file_sha256
    return {"command": command, **fields, "output": [str(p) for p in outputs], "complete": table.info["complete"],
            "started_at": started, "finished_at": utc_now(),
            "sha256": {**(sha256 or {}), "outputs": {str(p): file_sha256(p) for p in outputs}},
            "info": table.info, "issues": [i.to_dict() for i in table.issues],
            "status_counts": dict(collections.Counter(table["status"].tolist())), "versions": versions()}


def report_issues(issues, out=None) -> None:
    """Prints the first bad records (all of them are in the manifest)."""
    out = out or sys.stderr
    for issue in issues[:MAX_ISSUES_SHOWN]:
        print(f"  skipped {issue}", file=out)
    if len(issues) > MAX_ISSUES_SHOWN:
        print(f"  ... and {len(issues) - MAX_ISSUES_SHOWN} more (all listed in the manifest)", file=out)


def summarize_scores(table) -> list:
    """The lines printed after scoring: counts, throughput, unscorable records, truncation."""
    status = table["status"]
    ok = status == "ok"
    secs = table.info.get("seconds", 0.0)
    toks = table.info.get("scored_tokens_this_run", int(table["n_tokens"].sum()))
    lines = [f"scored {int(ok.sum())} of {len(table)} records read; this run: {toks} tokens in {secs:.1f} s "
             f"({toks / max(secs, 1e-9):.0f} tokens/s)"]
    if table.issues:
        lines.append(f"skipped {len(table.issues)} bad records (see above)")
    if not table.info.get("complete", True):
        lines.append("INCOMPLETE: the pool could not be read to its end (see above); the table holds the records "
                     "read before the break")
    unscorable = collections.Counter(status[~ok].tolist())
    if unscorable:
        lines.append("unscorable: " + ", ".join(f"{n} {s}" for s, n in unscorable.most_common()))
    n_trunc = int(np.sum(table["truncated"]))
    if n_trunc:
        lines.append(f"truncated at max_length={table.info.get('max_length')}: {n_trunc} records (flagged)")
    return lines


def selection_summary(scores, weights: np.ndarray, B: int, score_column: str = "g_hat") -> dict:
    """Counts of a selection: problems, valid and selected candidates, problems short of B valid
    candidates, and top-B candidates that got weight 0 (tied with the threshold)."""
    table = as_table(scores)
    valid = np.isfinite(np.asarray(table[score_column], dtype=np.float64))
    if "status" in table:
        valid &= table["status"] == "ok"
    order, offsets = group_offsets(table["problem_id"])
    n_valid = np.add.reduceat(valid[order], offsets[:-1]) if len(order) else np.zeros(0, np.int64)
    n_pos = np.add.reduceat(weights[order] > 0, offsets[:-1]) if len(order) else np.zeros(0, np.int64)
    firsts = table["problem_id"][order[offsets[:-1]]] if len(order) else np.zeros(0, object)
    return {"counts": {"problems": len(offsets) - 1, "candidates": len(table), "valid_candidates": int(valid.sum()),
                       "selected": int(n_pos.sum()),
                       "selected_with_zero_weight": int((np.minimum(n_valid, B) - n_pos).sum()),
                       "problems_with_fewer_than_B_valid": int((n_valid < B).sum()),
                       "problems_without_valid_candidates": int((n_valid == 0).sum())},
            "problems_with_fewer_than_B_valid": firsts[n_valid < B].tolist()}
