"""Selection front-end: per-trajectory weights from a score table by a selection rule (docs/method.md
§5), and the training set in the published schema (docs/method.md §6.5).

Words: a *method* is a selection proxy (``lark_fast.methods``: the score a candidate is ranked by,
``by=``); a *rule* turns those scores into weights (``rule=``: ``lark``, ``chi2``, ``chi2_global``).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Union

import numpy as np

from . import solver
from .groups import group_offsets
from .lark_json import read_lark_json
from .methods import ranking_score
from .table import ScoreTable, atomic_write

RULES = ("lark", "chi2", "chi2_global")


def as_table(scores) -> ScoreTable:
    """A ScoreTable from a ScoreTable, a path (a table, or a ``.json`` score file in the published layout:
    ``lark_json.read_lark_json``), a pandas DataFrame or a dict of columns."""
    if isinstance(scores, ScoreTable):
        return scores
    if isinstance(scores, (str, os.PathLike)):
        return read_lark_json(scores) if str(scores).lower().endswith(".json") else ScoreTable.read(scores)
    if hasattr(scores, "to_dict") and hasattr(scores, "columns"):  # pandas.DataFrame
        return ScoreTable({c: scores[c].to_numpy() for c in scores.columns})
    if isinstance(scores, dict):
        return ScoreTable(scores)
    raise TypeError(f"scores: expected a ScoreTable, a path or a dict of columns, got {type(scores).__name__}")


def select(scores, *, B: int = 3, rule: str = "lark", by: str = "lark", score_column: Optional[str] = None,
           tau=None, radius=None, cap=None, group_cap=None, method: Optional[str] = None) -> np.ndarray:
    """Per-trajectory weights aligned with the rows of ``scores`` (0 = not selected).

    The score ranked on is the selection proxy ``by`` (a name of ``lark_fast.methods.METHODS``:
    ``lark`` = g_hat, ``rsr``, ``ifd``, ...), oriented by its direction so that lower-is-better
    proxies select their lowest values; or, with ``score_column``, any column taken as
    higher-is-better.

    ``rule="lark"``: per problem, the top-B candidates by that score, weighted by their margin over
    the first excluded one (docs/method.md §5.3). Rows whose status is not ``ok`` or whose score is NaN
    are never selected while a valid candidate remains; a problem with fewer than B valid candidates
    keeps all of them.

    ``rule="chi2"``: per problem, the χ²-regularised weights of `solver.chi2_weights` with exactly
    one of ``tau`` (penalised) or ``radius`` (constrained), and optional item ``cap``; each problem's
    weights sum to 1. ``rule="chi2_global"``: one budget over all problems (`solver.chi2_global`),
    scaled so the weights sum to the number of problems (a problem averages 1, as with the other
    rules); ``cap`` (per candidate) and ``group_cap`` (per problem) are in those units. Problems without a
    valid candidate get weight 0 and do not count (a warning says how many).

    ``method``: the former name of ``rule`` (deprecated: "method" now means a selection proxy).
    """
    if method is not None:
        warnings.warn("select(method=...) is deprecated: the selection rule is now rule=...; "
                      "'method' names a selection proxy (by=...)", DeprecationWarning, stacklevel=2)
        rule = method
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    if rule == "lark" and any(v is not None for v in (tau, radius, cap, group_cap)):
        raise ValueError("tau, radius, cap, group_cap: only for rule='chi2' or 'chi2_global'")
    if rule == "chi2" and group_cap is not None:
        raise ValueError("group_cap: only for rule='chi2_global' (with 'chi2' every problem sums to 1)")
    table = as_table(scores)
    for col in ("problem_id",) + ((score_column,) if score_column else ()):
        if col not in table:
            raise ValueError(f"scores: no column {col!r}; columns: {', '.join(table.column_names)}")
    energy = (np.asarray(table[score_column], dtype=np.float64).copy() if score_column
              else ranking_score(table, by))
    if "status" in table:
        energy[table["status"] != "ok"] = np.nan
    order, offsets = group_offsets(table["problem_id"])
    weights = np.zeros(len(energy))
    if rule == "lark":
        weights[order] = solver.lark_weights(energy[order], offsets, B)
    elif rule == "chi2":
        weights[order] = solver.chi2_weights(energy[order], offsets, tau=tau, radius=radius, cap=cap)
    else:
        g = _problems_with_a_valid_candidate(energy[order], offsets)
        per = (lambda c: None if c is None else np.asarray(c, dtype=np.float64) / max(g, 1))
        weights[order] = g * solver.chi2_global(energy[order], tau=tau, radius=radius, cap=per(cap),
                                                offsets=offsets, group_cap=per(group_cap))
    return weights


def _problems_with_a_valid_candidate(energy: np.ndarray, offsets: np.ndarray) -> int:
    """Number of groups with a finite energy; warns when some have none (they are left out of the count
    that scales chi2_global's weights, so that the others still average 1)."""
    n = len(offsets) - 1
    g = int(np.logical_or.reduceat(np.isfinite(energy), offsets[:-1]).sum()) if len(energy) else 0
    if 0 < g < n:
        warnings.warn(f"chi2_global: {n - g} of {n} problems have no valid candidate and get weight 0; the "
                      f"weights average 1 over the other {g}", stacklevel=3)
    return g


def write_train_set(pool, table: ScoreTable, weights: np.ndarray, output: Union[str, os.PathLike], *,
                    score_column: str = "g_hat", on_error: str = "skip") -> dict:
    """Streams ``pool`` and writes each record with weight > 0 as
    ``{"messages": [...], "meta": {problem_id, candidate_id, teacher, score, train_weight}}``.

    Returns counts; bad pool records are in ``counts["issues"]`` (a list of PoolIssue). Raises ValueError,
    leaving no output, when the pool has no valid record, when nothing is selected, when a selected
    candidate is not in the pool, or when a record's messages differ from those that were scored (the
    table's ``content_hash``: the pool is not the one that was scored).
    """
    import json

    from .pool import PoolReader

    keys = {(p, c): i for i, (p, c) in enumerate(zip(table["problem_id"], table["candidate_id"]))}
    score = np.asarray(table[score_column], dtype=np.float64)
    hashes = table["content_hash"] if "content_hash" in table else None
    reader = PoolReader(pool, on_error=on_error)
    written, unscored, found = 0, 0, np.zeros(len(weights), dtype=bool)
    changed = []
    with atomic_write(output, encoding="utf-8") as f:
        for rec in reader:
            i = keys.get(rec.key)
            if i is None:
                unscored += 1
                continue
            found[i] = True
            if hashes is not None and hashes[i] and hashes[i] != rec.content_hash:
                changed.append(rec)
            if weights[i] <= 0:
                continue
            meta = {"problem_id": rec.problem_id, "candidate_id": rec.candidate_id, "teacher": rec.teacher,
                    "score": float(score[i]), "train_weight": float(weights[i])}
            f.write(json.dumps({"messages": rec.messages, "meta": meta}, ensure_ascii=False) + "\n")
            written += 1
        # raised inside the atomic write: no partial training set is left behind
        reader.require_records()
        if changed:
            named = ", ".join(f"{r.problem_id}/{r.candidate_id} ({reader.unit} {r.line})" for r in changed[:5])
            raise ValueError(f"{len(changed)} records of {reader.name} differ from the ones that were scored "
                             f"(other messages under the same ids: {named}{', ...' if len(changed) > 5 else ''}); "
                             "pass the pool that was scored, or score this one")
        missing = np.flatnonzero((weights > 0) & ~found)
        if len(missing):
            named = ", ".join(f"{table['problem_id'][i]}/{table['candidate_id'][i]}" for i in missing[:5])
            raise ValueError(f"{len(missing)} selected candidates of the scores are not in the pool {reader.name} "
                             f"({named}{', ...' if len(missing) > 5 else ''}); were the scores made from another pool?")
        if not written:
            raise ValueError("nothing to write: no candidate has a weight > 0 (no row of the score table has "
                             "status ok and a finite score)")
    return {"written": written, "pool_records": reader.n_valid, "pool_records_not_in_scores": unscored,
            "issues": reader.issues}
