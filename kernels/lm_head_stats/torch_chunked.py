"""Streaming torch path of the LM-head statistics: one pass over vocabulary chunks per token block.

No [N, V] tensor exists; the largest temporary is [token_block, vocab_block] fp32.
Per token the pass keeps, against a running max m (initialised at the target logit z_y, so every
update is finite):
    s  = sum_v exp(z_v - m)                       -> lse = m + log s
    s1 = sum_v exp(z_v - m) (z_v - m)             -> entropy = log s - s1 / s
    s2 = sum_{v != y} exp(2 (z_v - m))            -> sum_{v != y} p_v^2 = s2 / s^2
    gt = #{v : z_v > z_y}                         -> rank = 1 + gt
and, with ``topk``, the running K largest logits (top-K compatibility Brier).
When m grows to m', s and s2 rescale by a = exp(m - m') and a^2, and s1 -> a (s1 + (m - m') s).
z_y comes from a dot product with the target's row and replaces the GEMM's value in the target's
column, so the target is counted exactly once and never compared with itself.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .common import LMHeadStats, transform_logits_

TEMP_BUDGET = 1 << 24  # elements of the [token_block, vocab_block] fp32 temporaries (64 MiB)


def lm_head_stats_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                        softcap: Optional[float] = None, topk: int = 0, ignore_index: int = -100,
                        vocab_block: int = 8192, token_block: Optional[int] = None) -> LMHeadStats:
    n = hidden.shape[0]
    v = weight.shape[0]
    vocab_block = max(1, min(vocab_block, v))
    token_block = token_block or max(1, TEMP_BUDGET // vocab_block)
    dev = hidden.device
    f32 = dict(dtype=torch.float32, device=dev)
    lse, nll, brier, entropy = (torch.zeros(n, **f32) for _ in range(4))
    rank = torch.zeros(n, dtype=torch.int32, device=dev)
    brier_topk = torch.zeros(n, **f32) if topk else None

    for t0 in range(0, n, token_block):
        t1 = min(n, t0 + token_block)
        h = hidden[t0:t1].float()
        ignored = targets[t0:t1] == ignore_index
        y = targets[t0:t1].masked_fill(ignored, 0)
        zy = (h * weight[y].float()).sum(1)
        if bias is not None:
            zy += bias[y].float()
        zy = transform_logits_(zy, logit_scale, softcap)

        m = zy.clone()
        s, s1, s2 = (torch.zeros(t1 - t0, **f32) for _ in range(3))
        gt = torch.zeros(t1 - t0, dtype=torch.int64, device=dev)
        top = None
        rows = torch.arange(t1 - t0, device=dev)
        for v0 in range(0, v, vocab_block):
            v1 = min(v, v0 + vocab_block)
            z = h @ weight[v0:v1].float().T
            if bias is not None:
                z += bias[v0:v1].float()
            transform_logits_(z, logit_scale, softcap)
            here = (y >= v0) & (y < v1)
            r, c = rows[here], y[here] - v0
            z[r, c] = zy[here]
            gt += (z > zy[:, None]).sum(1)
            if topk:
                cand = z if top is None else torch.cat([top, z], 1)
                top = cand.topk(min(topk, cand.shape[1]), dim=1).values
            m_new = torch.maximum(m, z.amax(1))
            a = torch.exp(m - m_new)
            z -= m_new[:, None]
            e = torch.exp(z)
            s1 = a * (s1 + (m - m_new) * s) + torch.einsum("ij,ij->i", e, z)
            s = a * s + e.sum(1)
            e[r, c] = 0
            s2 = a * a * s2 + torch.einsum("ij,ij->i", e, e)
            m = m_new

        log_s = torch.log(s)
        lse_b = m + log_s
        nll_b = (lse_b - zy).clamp(min=0)
        brier[t0:t1] = torch.expm1(-nll_b).square() + s2 / (s * s)   # (1 - p_y)^2 + sum_{v!=y} p_v^2
        lse[t0:t1] = lse_b
        nll[t0:t1] = nll_b
        entropy[t0:t1] = (log_s - s1 / s).clamp(0, math.log(v))
        rank_b = 1 + gt
        rank[t0:t1] = rank_b.to(torch.int32)
        if topk:
            lse_k = torch.logsumexp(top, dim=1)
            p_k = torch.exp(top - lse_k[:, None])
            p_y = torch.exp(zy - lse_k) * (rank_b <= topk)
            brier_topk[t0:t1] = 1 - 2 * p_y + (p_k * p_k).sum(1)

    ignored = targets == ignore_index
    for x in (lse, nll, brier, entropy, rank) + ((brier_topk,) if topk else ()):
        x.masked_fill_(ignored, 0)
    return LMHeadStats(lse=lse, nll=nll, brier=brier, entropy=entropy, rank=rank, brier_topk=brier_topk)
