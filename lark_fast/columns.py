"""The per-record columns of a scoring run, declared once.

A scoring run keeps one row per pool record: who it is, how it was tokenised and scored, and float64
sums over its scored tokens from which ``scoring.build_table`` makes the score table. The sums of the
fused pass are the fields of the op's ``SegmentSums``; each method with extra forwards adds
``<name>_nll`` and ``<name>_n`` (``methods.EXTRA_SUMS``); gradient sketches add their norms and the
scale of the stored float16 sketch. Rows are built as dicts keyed by these names.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .methods import EXTRA_SUMS
from .ops import SegmentSums

IDENTITY = {"ordinal": np.int64, "problem_id": object, "candidate_id": object, "teacher": object,
            "content_hash": object, "truncated": bool, "status": object, "reason": object}
STAT_SUMS = tuple(f.name for f in dataclasses.fields(SegmentSums))  # n_tokens, nll, brier, ...
GRADIENT_SUMS = ("grad_norm_sq", "grad_norm_sq_exact", "sketch_scale")

COLUMNS = {**IDENTITY, **{k: np.int64 if k == "n_tokens" else np.float64
                          for k in STAT_SUMS + EXTRA_SUMS + GRADIENT_SUMS}}  # name -> numpy dtype (object = string)


def missing(name: str):
    """The value a row holds for a sum it does not have (0 tokens, NaN otherwise)."""
    return 0 if COLUMNS[name] is np.int64 else np.nan


def to_columns(rows: list) -> dict:
    """numpy columns of ``COLUMNS`` from row dicts (absent sums take ``missing``)."""
    return {k: np.array([r.get(k, missing(k)) for r in rows], dtype=t) for k, t in COLUMNS.items()}
