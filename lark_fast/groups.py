"""Grouping items by key (candidates by problem) into the offsets layout the solvers take."""
from __future__ import annotations

import numpy as np


def group_offsets(keys) -> tuple[np.ndarray, np.ndarray]:
    """Group items by key, keeping first-appearance order of groups and item order inside a group.

    Returns ``(order, offsets)``: ``values[order]`` is grouped, group g being
    ``offsets[g]:offsets[g+1]`` of the reordered array.
    """
    keys = np.asarray(keys, dtype=object)
    first: dict = {}
    gid = np.fromiter((first.setdefault(k, len(first)) for k in keys), dtype=np.int64, count=len(keys))
    order = np.argsort(gid, kind="stable")
    counts = np.bincount(gid, minlength=len(first))
    offsets = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return order, offsets
