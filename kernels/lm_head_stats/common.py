"""Shared pieces of the LM-head statistics op: the result type, input checks, logit transform,
segment sums. SPEC §2 defines the statistics.

Logits are z = softcap(logit_scale * (W h + b)), where softcap(x) = c * tanh(x / c) when a cap c
is given. Every statistic is accumulated in fp32 whatever the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

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
    sketch: Optional[torch.Tensor] = None        # with sketch_dim: [N, k] fp32, P (f ⊙ (p - e_y)) (SPEC §4)
    segments: Optional[SegmentSums] = None


def transform_logits_(z: torch.Tensor, logit_scale: float, softcap: Optional[float]) -> torch.Tensor:
    """In place: z <- softcap(logit_scale * z)."""
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def check_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, topk, ignore_index) -> None:
    """Validates the op's inputs; raises ValueError naming the argument."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(f"hidden: expected a floating tensor [N, d], got {_describe(hidden)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight: expected a floating tensor [V, d], got {_describe(weight)}")
    n, d = hidden.shape
    v = weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(f"weight: hidden size {weight.shape[1]} does not match hidden's {d}")
    if v == 0:
        raise ValueError("weight: empty vocabulary")
    if not isinstance(targets, torch.Tensor) or targets.shape != (n,) or targets.is_floating_point():
        raise ValueError(f"targets: expected an integer tensor [{n}], got {_describe(targets)}")
    for name, t in (("weight", weight), ("targets", targets), ("bias", bias), ("cu_seqlens", cu_seqlens)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name}: on {t.device}, hidden on {hidden.device}")
    if bias is not None and (bias.shape != (v,) or not bias.is_floating_point()):
        raise ValueError(f"bias: expected a floating tensor [{v}], got {_describe(bias)}")
    if not (isinstance(logit_scale, (int, float)) and logit_scale > 0):
        raise ValueError(f"logit_scale: expected a positive number, got {logit_scale!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0):
        raise ValueError(f"softcap: expected None or a positive number, got {softcap!r}")
    if not isinstance(topk, int) or not 0 <= topk <= min(MAX_TOPK, v):
        raise ValueError(f"topk: expected an int in [0, {min(MAX_TOPK, v)}], got {topk!r}")
    if n:
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= v))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"targets: targets[{i}] = {int(targets[i])} is outside [0, {v}) and is not "
                             f"ignore_index ({ignore_index})")
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens: expected an int32/int64 tensor [S + 1], got {_describe(cu_seqlens)}")
        cu = cu_seqlens.cpu()
        if int(cu[0]) != 0 or int(cu[-1]) != n:
            raise ValueError(f"cu_seqlens: must start at 0 and end at N = {n}, got {int(cu[0])} .. {int(cu[-1])}")
        steps = cu[1:] - cu[:-1]
        if bool((steps < 0).any()):
            i = int((steps < 0).nonzero()[0, 0])
            raise ValueError(f"cu_seqlens: decreases at segment {i}")


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


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {x.dtype} on {x.device}"
    return type(x).__name__
