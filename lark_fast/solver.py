"""Python face of the C++ selection solvers (`lark_fast._C`). SPEC §5 states the math.

Every function takes flat arrays with group offsets: group g holds items ``offsets[g]:offsets[g+1]``.
float32 and float64 energies are read in place; other dtypes are converted to float64.
Bad input raises ``ValueError`` naming the argument (and the first offending group).
"""
from __future__ import annotations

import numpy as np

from . import _C

__all__ = ["lark_weights", "group_offsets"]


def _as_energies(energies) -> np.ndarray:
    e = np.asarray(energies)
    if e.dtype not in (np.float32, np.float64):
        e = e.astype(np.float64)
    return np.ascontiguousarray(e)


def _as_offsets(offsets) -> np.ndarray:
    o = np.asarray(offsets)
    if o.dtype.kind not in "iu":
        raise ValueError(f"offsets: expected integers, got dtype {o.dtype}")
    return np.ascontiguousarray(o, dtype=np.int64)


def lark_weights(energies, offsets, B: int) -> np.ndarray:
    """The published LARK rule per group: top-B by energy, weights proportional to e_k - e_(B+1).

    NaN and -inf energies are never selected while a valid item remains; see SPEC §5 for the
    compatibility edge cases. Returns float64 weights [N] summing to 1 over each group that has a
    valid item (0 elsewhere).
    """
    if isinstance(B, (bool, np.bool_)) or not isinstance(B, (int, np.integer)):
        raise ValueError(f"B: expected an integer >= 1, got {B!r}")
    return _C.lark_weights(_as_energies(energies), _as_offsets(offsets), int(B))


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
