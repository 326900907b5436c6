"""Shared pieces of the LM-head statistics op: the result types, its input checks, segment sums.
docs/method.md §2 defines the statistics; every one is accumulated in fp32 whatever the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..head import check_head_inputs

MAX_TOPK = 64
RANK_CLIP = 100  # RSR clips ranks at 100 (arXiv 2601.14249)
RANK_TIE = 2.0 ** -20  # relative margin under which a logit ties with the target's (fp32 rounding)


@dataclass
class SegmentSums:
    """Per-segment sums over the non-ignored tokens of each ``cu_seqlens`` segment, in float64."""

    n_tokens: torch.Tensor  # int64 [S]
    nll: torch.Tensor
    brier: torch.Tensor
    entropy: torch.Tensor
    rank_clipped: torch.Tensor  # sum of min(rank, 100)
    brier_topk: Optional[torch.Tensor] = None
    entropy_topk: Optional[torch.Tensor] = None


@dataclass
class LMHeadStats:
    """Per-token statistics [N] (fp32; ``rank`` int32). Ignored tokens hold 0 everywhere."""

    lse: torch.Tensor
    nll: torch.Tensor
    brier: torch.Tensor
    entropy: torch.Tensor
    rank: torch.Tensor
    brier_topk: Optional[torch.Tensor] = None    # with topk: the published top-K renormalised Brier
    entropy_topk: Optional[torch.Tensor] = None  # with topk: entropy of the top-K renormalised softmax
    sketch: Optional[torch.Tensor] = None        # with sketch_dim: [N, k] fp32, P (f ⊙ (p - e_y)) (method §4.4)
    segments: Optional[SegmentSums] = None


def check_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, topk, ignore_index) -> None:
    """Validates the statistics op's inputs; raises ValueError naming the argument."""
    check_head_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, ignore_index)
    v = weight.shape[0]
    if not isinstance(topk, int) or not 0 <= topk <= min(MAX_TOPK, v):
        raise ValueError(f"topk: expected an int in [0, {min(MAX_TOPK, v)}], got {topk!r}")


def segment_sums(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """float64 sum of ``values`` over each segment; each sum depends only on its own segment."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    if values.numel() == 0:
        return torch.zeros(lengths.numel(), dtype=torch.float64, device=values.device)
    return torch.segment_reduce(values.to(torch.float64), "sum", lengths=lengths, unsafe=True)


def reduce_segments(stats: LMHeadStats, targets: torch.Tensor, cu_seqlens: torch.Tensor,
                    ignore_index: int) -> SegmentSums:
    kept = targets != ignore_index
    return SegmentSums(
        n_tokens=segment_sums(kept, cu_seqlens).round().to(torch.int64),
        nll=segment_sums(stats.nll, cu_seqlens),
        brier=segment_sums(stats.brier, cu_seqlens),
        entropy=segment_sums(stats.entropy, cu_seqlens),
        rank_clipped=segment_sums(stats.rank.clamp(max=RANK_CLIP), cu_seqlens),
        brier_topk=None if stats.brier_topk is None else segment_sums(stats.brier_topk, cu_seqlens),
        entropy_topk=None if stats.entropy_topk is None else segment_sums(stats.entropy_topk, cu_seqlens),
    )
