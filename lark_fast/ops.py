"""Public ops, re-exported from ``lark_fast.kernels`` with one addition: ``backend=None`` (the default)
reads the environment variable ``LARK_FAST_BACKEND`` ("auto" when unset), so a whole run can be
switched to one implementation without touching code.

- ``lm_head_stats``: per-token statistics of the LM head without logits (docs/method.md §2)
- ``lm_head_backward``: dH of the per-token nll from the saved lse (docs/method.md §2.7)
- ``weighted_ce``: the weighted SFT loss through the LM head (docs/method.md §6.3)
"""
from __future__ import annotations

import functools
import os
from typing import Optional

from .kernels.backend import BACKENDS
from .kernels.lm_head_backward import lm_head_backward as _lm_head_backward
from .kernels.lm_head_stats import MAX_SKETCH, LMHeadStats, SegmentSums
from .kernels.lm_head_stats import lm_head_stats as _lm_head_stats
from .kernels.weighted_ce import weighted_ce as _weighted_ce

__all__ = ["lm_head_stats", "lm_head_backward", "weighted_ce", "LMHeadStats", "SegmentSums", "BACKENDS",
           "MAX_SKETCH", "resolve_backend"]

ENV = "LARK_FAST_BACKEND"


def resolve_backend(backend: Optional[str] = None) -> str:
    """``backend``, or $LARK_FAST_BACKEND when it is None, or "auto"."""
    return backend if backend is not None else os.environ.get(ENV, "auto")


def _with_env_backend(op):
    @functools.wraps(op)
    def wrapped(*args, backend: Optional[str] = None, **kwargs):
        return op(*args, backend=resolve_backend(backend), **kwargs)
    return wrapped


lm_head_stats = _with_env_backend(_lm_head_stats)
lm_head_backward = _with_env_backend(_lm_head_backward)
weighted_ce = _with_env_backend(_weighted_ce)
