"""Public ops. ``lm_head_stats`` is the fused LM-head statistics op (SPEC §2)."""
from __future__ import annotations

from typing import Optional

import torch

from .kernels.lm_head_stats import (TRITON_INTERPRET, LMHeadStats, SegmentSums, check_inputs, lm_head_stats_torch,
                                     lm_head_stats_triton, reduce_segments)

__all__ = ["lm_head_stats", "LMHeadStats", "SegmentSums"]

_BACKENDS = ("auto", "torch", "triton")


def _use_triton(backend: str, device: torch.device) -> bool:
    runnable = lm_head_stats_triton is not None and (device.type == "cuda" or TRITON_INTERPRET)
    if backend == "triton" and not runnable:
        raise ValueError("backend='triton' needs triton installed and CUDA tensors (or TRITON_INTERPRET=1 "
                         "set before lark_fast is imported)")
    return backend == "triton" or (backend == "auto" and runnable)


def lm_head_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                  bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                  softcap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None,
                  topk: int = 0, ignore_index: int = -100, backend: str = "auto") -> LMHeadStats:
    """Per-token statistics of z = softcap(logit_scale * (weight @ h + bias)) against ``targets``.

    hidden [N, d] (fp32/bf16/fp16), weight [V, d], targets [N] int (``ignore_index`` = skip),
    bias [V] or None, softcap c: z -> c tanh(z / c). Returns fp32 ``lse, nll, brier, entropy``,
    int32 ``rank`` (1 + #{v: z_v > z_y}) and, with ``topk=K`` (K <= 64), ``brier_topk`` (the
    published top-K renormalised Brier) and ``entropy_topk`` (entropy of that renormalised softmax). With ``cu_seqlens`` (int, [S + 1]) also float64
    per-segment sums over non-ignored tokens in ``.segments``. Ignored tokens hold 0.
    Directions: nll, brier, rank lower = the student already predicts the token.

    ``backend``: "auto" runs the fused Triton kernel on CUDA tensors (or everywhere when triton was
    imported with TRITON_INTERPRET=1) and the chunked torch path otherwise; "torch" / "triton" force.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    check_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, topk, ignore_index)
    impl = lm_head_stats_triton if _use_triton(backend, hidden.device) else lm_head_stats_torch
    stats = impl(hidden, weight, targets, bias=bias, logit_scale=float(logit_scale),
                 softcap=None if softcap is None else float(softcap), topk=topk, ignore_index=ignore_index)
    if cu_seqlens is not None:
        stats.segments = reduce_segments(stats, targets, cu_seqlens, ignore_index)
    return stats
