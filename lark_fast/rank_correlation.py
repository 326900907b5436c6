"""Spearman rank correlation within problems (candidates are only ever compared with the other
candidates of their problem), and a bootstrap interval over problems (docs/method.md §10.4)."""
from __future__ import annotations

import numpy as np

from .groups import group_offsets


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman_per_problem(problem_ids, a: np.ndarray, b: np.ndarray) -> tuple:
    """(problem ids, Spearman correlations) of a and b within each problem that has >= 3 candidates
    finite in both and neither constant; problems in first-appearance order."""
    order, offsets = group_offsets(problem_ids)
    problem_ids = np.asarray(problem_ids, dtype=object)
    pids, values = [], []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        idx = order[lo:hi]
        idx = idx[np.isfinite(a[idx]) & np.isfinite(b[idx])]
        if len(idx) < 3:
            continue
        ra, rb = ranks(a[idx]), ranks(b[idx])
        if ra.std() == 0 or rb.std() == 0:
            continue
        pids.append(problem_ids[idx[0]])
        values.append(float(np.corrcoef(ra, rb)[0, 1]))
    return pids, np.asarray(values, dtype=np.float64)


def spearman_within_problems(problem_ids, a: np.ndarray, b: np.ndarray) -> float:
    """Mean over problems (>= 3 candidates valid for both) of the Spearman correlation of a and b."""
    values = spearman_per_problem(problem_ids, a, b)[1]
    return float(values.mean()) if len(values) else float("nan")


def bootstrap_interval(values: np.ndarray, *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple:
    """Percentile interval of the mean of ``values`` (one per problem) over ``resamples`` resamplings of
    the problems with replacement; (nan, nan) without values."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
