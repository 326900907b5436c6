"""Gradient sketches: seeded Rademacher projections generated from a counter-based hash (torch and
Triton give the same bits) and per-segment sums of outer products of projected vectors.

- ``projection.py``: ``projection_key``, ``rademacher`` (torch), ``rademacher_tile`` (Triton)
- ``segment.py``: ``SegmentPlan.outer`` (thin padded bmm) next to ``segment_outer_naive``
"""
from .projection import IN, OUT, projection_key, rademacher, rademacher_tile, signs
from .segment import SegmentPlan, segment_outer_naive

__all__ = ["IN", "OUT", "projection_key", "rademacher", "rademacher_tile", "signs", "SegmentPlan",
           "segment_outer_naive"]
