"""Public ops. ``lm_head_stats`` is the fused LM-head statistics op (SPEC §2)."""
from __future__ import annotations

from typing import Optional

import torch

from .kernels.lm_head_stats import LMHeadStats, SegmentSums, check_inputs, lm_head_stats_torch, reduce_segments

__all__ = ["lm_head_stats", "LMHeadStats", "SegmentSums"]

_BACKENDS = ("auto", "torch")


def lm_head_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                  bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                  softcap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None,
                  topk: int = 0, ignore_index: int = -100, backend: str = "auto") -> LMHeadStats:
    """Per-token statistics of z = softcap(logit_scale * (weight @ h + bias)) against ``targets``.

    hidden [N, d] (fp32/bf16/fp16), weight [V, d], targets [N] int (``ignore_index`` = skip),
    bias [V] or None, softcap c: z -> c tanh(z / c). Returns fp32 ``lse, nll, brier, entropy``,
    int32 ``rank`` (1 + #{v: z_v > z_y}) and, with ``topk=K`` (K <= 64), ``brier_topk`` (the
    published top-K renormalised Brier). With ``cu_seqlens`` (int, [S + 1]) also float64
    per-segment sums over non-ignored tokens in ``.segments``. Ignored tokens hold 0.
    Directions: nll, brier, rank lower = the student already predicts the token.
    """
    check_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, topk, ignore_index)
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    stats = lm_head_stats_torch(hidden, weight, targets, bias=bias, logit_scale=float(logit_scale),
                                softcap=None if softcap is None else float(softcap), topk=topk,
                                ignore_index=ignore_index)
    if cu_seqlens is not None:
        stats.segments = reduce_segments(stats, targets, cu_seqlens, ignore_index)
    return stats
