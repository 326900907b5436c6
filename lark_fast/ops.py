"""Public ops, re-exported from ``lark_fast.kernels`` with one addition: ``backend=None`` (the default)
reads the environment variable ``LARK_FAST_BACKEND`` ("auto" when unset), so a whole run can be
switched to one implementation without touching code; an op without that implementation (no C++
kernel for ``LARK_FAST_BACKEND=cpu``) takes its torch path.

- ``lm_head_stats``: per-token statistics of the LM head without logits (docs/method.md §2)
- ``lm_head_backward``: dH of the per-token nll from the saved lse (docs/method.md §2.7)
- ``weighted_ce``: the weighted SFT loss through the LM head (docs/method.md §6.3)
"""
from __future__ import annotations

import functools
import os
from typing import Optional

from .kernels.backend import BACKENDS
from .kernels.lm_head_backward import op as _backward_op
from .kernels.lm_head_stats import MAX_SKETCH, LMHeadStats, SegmentSums
from .kernels.lm_head_stats import op as _stats_op
from .kernels.weighted_ce import op as _ce_op

__all__ = ["lm_head_stats", "lm_head_backward", "weighted_ce", "LMHeadStats", "SegmentSums", "BACKENDS",
           "MAX_SKETCH", "resolve_backend"]

ENV = "LARK_FAST_BACKEND"


def resolve_backend(backend: Optional[str] = None, available=BACKENDS) -> str:
    """``backend``; when it is None, $LARK_FAST_BACKEND ("auto" when unset), or "torch" when the op does not
    have that one (``available``)."""
    if backend is not None:
        return backend
    env = os.environ.get(ENV, "auto")
    return env if env in available or env not in BACKENDS else "torch"


def _with_env_backend(op, available):
    @functools.wraps(op)
    def wrapped(*args, backend: Optional[str] = None, **kwargs):
        return op(*args, backend=resolve_backend(backend, available), **kwargs)
    return wrapped


lm_head_stats = _with_env_backend(_stats_op.lm_head_stats, _stats_op.AVAILABLE)
lm_head_backward = _with_env_backend(_backward_op.lm_head_backward, _backward_op.AVAILABLE)
weighted_ce = _with_env_backend(_ce_op.weighted_ce, _ce_op.AVAILABLE)
