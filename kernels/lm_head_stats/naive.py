"""Readable reference: materialises the full [N, V] logits, as the published scorer does.

Used by benchmarks (the ``torch-naive`` provider) and as documentation of the math; never by the
scorer. Memory O(N * V).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..head import transform_logits_
from .common import RANK_TIE, LMHeadStats


def lm_head_stats_naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                        softcap: Optional[float] = None, topk: int = 0, ignore_index: int = -100,
                        dtype: torch.dtype = torch.float32) -> LMHeadStats:
    z = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        z += bias.to(dtype)
    z = transform_logits_(z, logit_scale, softcap)
    ignored = targets == ignore_index
    y = targets.masked_fill(ignored, 0)
    zy = z.gather(1, y[:, None])[:, 0]

    lse = torch.logsumexp(z, dim=1)                       # log sum_v exp(z_v)
    p = torch.softmax(z, dim=1)
    nll = (lse - zy).clamp(min=0)                         # lse - z_y
    p_y = p.gather(1, y[:, None])[:, 0]
    brier = (p * p).sum(1) - 2 * p_y + 1                  # ||p - e_y||^2
    entropy = (lse - (p * z).sum(1)).clamp(0, math.log(z.shape[1]))
    above = zy + RANK_TIE * zy.abs().clamp(min=1)        # ties (up to fp32 rounding) favour y
    rank = 1 + (z > above[:, None]).sum(1)

    brier_topk = entropy_topk = None
    if topk:
        vals = z.topk(topk, dim=1).values
        lse_k = torch.logsumexp(vals, dim=1)              # softmax renormalised over the top K
        pt = torch.exp(vals - lse_k[:, None])
        pt_y = torch.exp(zy - lse_k) * (rank <= topk)     # y is in the top K iff rank <= K
        brier_topk = 1 - 2 * pt_y + (pt * pt).sum(1)
        entropy_topk = -(pt * (vals - lse_k[:, None])).sum(1)

    def out(x):
        return x.float().masked_fill(ignored, 0)

    return LMHeadStats(lse=out(lse), nll=out(nll), brier=out(brier), entropy=out(entropy),
                       rank=rank.to(torch.int32).masked_fill(ignored, 0),
                       brier_topk=None if brier_topk is None else out(brier_topk),
                       entropy_topk=None if entropy_topk is None else out(entropy_topk))
