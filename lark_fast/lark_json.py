"""The published LARK scorer's score file ("lark-json", docs/method.md §7.3), both ways: written from a
score table (``lark-fast score --format lark-json``) and read as a score table (``lark-fast select
--scores FILE.json``).

    {"method": "lark_ghat", "student_model": str, "top_k": int, "n_problems": int, "n_scored": int,
     "n_skipped": int,
     "scores": {"<problem_id>": [{"candidate_id": ..., "teacher": str, "L": float, "Brier": float,
                                 "rho": float, "g_hat": float}, ...], ...},
     "lark_fast": {...}}

Problems are keyed by ``str(problem_id)`` in the order of the ids as the pool wrote them (integers
numerically); candidates keep the pool's order and their id's JSON type. Only scored candidates are
listed. ``Brier``, ``rho`` and ``g_hat`` are the values the run's mode builds ĝ on: with
``compat="published"`` the top-K Brier and ``top_k`` = K, exactly as the published scorer wrote them;
by default the exact Brier and ``top_k`` = the vocabulary size (a top-V renormalised softmax is the
softmax itself). Everything else lark_fast knows sits under the one extra key ``"lark_fast"``, so that
readers of the published layout are not disturbed.
"""
from __future__ import annotations

import json
import math
import os
from typing import Union

import numpy as np

from .table import ScoreTable

METHOD = "lark_ghat"
EXTRA_KEY = "lark_fast"
NUMBERS = ("L", "Brier", "rho", "g_hat")  # the published candidate's float fields
EXTRA_COLUMNS = ("n_tokens", "truncated", "brier", "entropy", "rsr", "content_hash")  # per candidate, under EXTRA_KEY


def to_lark_json(table: ScoreTable, pool, *, student_model: str, vocab_size: int) -> dict:
    """The published layout of ``table``, scored from ``pool`` (a path, records or a PoolReader source),
    which is read again for the JSON types of its ids; its valid records must be the table's rows, in
    order (ValueError otherwise). ``vocab_size``: the student's, the ``top_k`` of the exact mode."""
    from . import __version__
    from .pool import PoolReader

    compat = table.info.get("compat", "exact")
    top = next((c for c in table.column_names if c.startswith("brier_top")), None)
    if compat == "published":
        brier_column, top_k = top, int(top[len("brier_top"):])
    else:
        brier_column, top_k = "brier", int(vocab_size)
    extra_columns = [c for c in EXTRA_COLUMNS + ((top,) if top else ()) if c in table]
    status, pids, cids = table["status"], table["problem_id"], table["candidate_id"]
    values = {k: np.asarray(table[c], dtype=np.float64) for k, c in
              zip(NUMBERS, ("L", brier_column, "rho", "g_hat"))}

    groups: dict = {}  # problem_id -> (the pool's value, candidates, their extra fields)
    skipped = []
    reader = PoolReader(pool, on_error="skip")
    i = -1
    for i, rec in enumerate(reader):
        if i >= len(table) or rec.key != (pids[i], cids[i]):
            row = f"row {i} is {pids[i]}/{cids[i]}" if i < len(table) else f"has only {len(table)} rows"
            raise ValueError(f"{reader.name}: {reader.unit} {rec.line} is {rec.problem_id}/{rec.candidate_id}, the "
                             f"score table's {row}: not the pool that was scored")
        pid_json, cid_json = rec.json_ids
        if status[i] != "ok":
            skipped.append({"problem_id": pid_json, "candidate_id": cid_json, "teacher": rec.teacher,
                            "status": status[i], "reason": table["reason"][i] if "reason" in table else ""})
            continue
        group = groups.setdefault(rec.problem_id, (pid_json, [], []))
        group[1].append({"candidate_id": cid_json, "teacher": rec.teacher,
                         **{k: float(values[k][i]) for k in NUMBERS}})
        group[2].append({c: table[c][i] if table[c].dtype == object else table[c][i].item() for c in extra_columns})
    if i + 1 != len(table):
        raise ValueError(f"{reader.name}: has {i + 1} valid records, the score table {len(table)} rows: not the pool "
                         "that was scored")
    order = sorted(groups.values(), key=lambda g: (isinstance(g[0], str), g[0]))
    n_scored = sum(len(g[1]) for g in order)
    return {"method": METHOD, "student_model": student_model, "top_k": top_k, "n_problems": len(order),
            "n_scored": n_scored, "n_skipped": len(table) - n_scored + len(table.issues),
            "scores": {str(g[0]): g[1] for g in order},
            EXTRA_KEY: {"version": __version__, "compat": compat,
                        "brier": top if compat == "published" else "exact",
                        "candidates": {str(g[0]): g[2] for g in order}, "skipped": skipped,
                        "bad_records": len(table.issues)}}


def read_lark_json(path: Union[str, os.PathLike]) -> ScoreTable:
    """A score table (problem_id, candidate_id, teacher, L, brier, rho, g_hat, content_hash, status) from a file in
    the published layout, written by the published scorer or by ``to_lark_json``; ids become strings as in
    the pool reader; with the ``lark_fast.candidates`` of ``to_lark_json``, each candidate's ``content_hash``
    too, so that ``select`` checks the pool against the scored messages. A file that is not in that layout, a
    candidate without one of the fields, a field of the wrong type and a candidate listed twice are
    ValueErrors naming the file, problem, position and field."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("scores"), dict):
        raise ValueError(f"{path}: not a LARK score file: expected an object with \"scores\": {{problem_id: "
                         "[{candidate_id, teacher, L, Brier, rho, g_hat}, ...]}} (the published scorer's layout)")
    names = ("problem_id", "candidate_id", "teacher", "L", "brier", "rho", "g_hat", "content_hash")
    cols: dict = {k: [] for k in names}
    extra = obj.get(EXTRA_KEY)
    extra = extra.get("candidates") if isinstance(extra, dict) else None
    seen = {}
    for pid, cands in obj["scores"].items():
        if not isinstance(cands, list):
            raise ValueError(f"{path}: scores[{pid!r}]: expected a list of candidates, got {_type(cands)}")
        for j, c in enumerate(cands):
            where = f"{path}: scores[{pid!r}][{j}]"
            if not isinstance(c, dict):
                raise ValueError(f"{where}: expected an object, got {_type(c)}")
            for name in ("candidate_id",) + NUMBERS:
                if name not in c:
                    raise ValueError(f"{where}: missing field {name!r}")
            cid = c["candidate_id"]
            if isinstance(cid, bool) or not isinstance(cid, (str, int)):
                raise ValueError(f"{where}.candidate_id: expected a string or integer, got {_type(cid)}")
            teacher = c.get("teacher", "")
            if not isinstance(teacher, str):
                raise ValueError(f"{where}.teacher: expected a string, got {_type(teacher)}")
            for name in NUMBERS:
                v = c[name]
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise ValueError(f"{where}.{name}: expected a number, got {_type(v)}")
            key = (pid, str(cid))
            if key in seen:
                raise ValueError(f"{where}: candidate {cid!r} of problem {pid!r} is listed twice (also at "
                                 f"scores[{pid!r}][{seen[key]}])")
            seen[key] = j
            cols["problem_id"].append(pid)
            cols["candidate_id"].append(str(cid))
            cols["teacher"].append(teacher)
            for name in NUMBERS:
                cols[name.lower() if name == "Brier" else name].append(math.nan if c[name] is None else float(c[name]))
            cols["content_hash"].append(_content_hash(extra, pid, j, len(cands)))
    if not seen:
        raise ValueError(f"{path}: \"scores\" lists no candidate")
    return ScoreTable({**cols, "status": ["ok"] * len(seen)})


def _content_hash(extra, pid: str, j: int, n: int) -> str:
    """The content_hash ``to_lark_json`` wrote for candidate j of the n of problem pid ("" when there is none)."""
    cands = extra.get(pid) if isinstance(extra, dict) else None
    if not isinstance(cands, list) or len(cands) != n or not isinstance(cands[j], dict):
        return ""
    value = cands[j].get("content_hash", "")
    return value if isinstance(value, str) else ""


def _type(v) -> str:
    return "null" if v is None else type(v).__name__
