"""Streaming torch path of the LM-head statistics: one pass over vocabulary chunks per token block.

No [N, V] tensor exists; the largest temporaries are two [token_block, vocab_block] fp32 buffers,
allocated once and reused by every chunk (logits, then their exponentials).
Per token the pass keeps, against a running max m (initialised at the target logit z_y, so every
update is finite), sums over the non-target tokens v != y:
    r  = sum_{v != y} exp(z_v - m)
    r1 = sum_{v != y} exp(z_v - m) (z_v - m)
    r2 = sum_{v != y} exp(2 (z_v - m))
    gt = #{v : z_v > z_y}
and, with ``topk``, the running K largest logits (top-K compatibility Brier and entropy of the
top-K renormalised softmax p~: -sum p~ log p~). After the GEMM each
chunk costs four elementwise passes (compare-count, max, shift, exp) and three dot products. When m
grows to m', r and r2 rescale by a = exp(m - m') and a^2, and r1 -> a (r1 + (m - m') r). At the end, with
e_y = exp(z_y - m) and s = e_y + r:
    lse = m + log s,  nll = log1p(r / e_y) (= lse - z_y without cancellation when p_y -> 1),
    entropy = log s - (r1 + e_y (z_y - m)) / s,  brier = expm1(-nll)^2 + r2 / s^2,  rank = 1 + gt.
z_y comes from a dot product with the target's row and replaces the GEMM's value in the target's
column, so the target is never compared with itself. Ties favour y, and a tie is equality up to
fp32 rounding: z_v counts as greater only above z_y + RANK_TIE * max(1, |z_y|), so that a token
whose weight row duplicates the target's never outranks it whichever way its GEMM value rounded.

With ``sketch_dim=k`` the same sweep sketches the head's output gradient (docs/method.md §4): with the
Rademacher projection P (k × V) of ``sketch_key`` (``lark_fast.kernels.sketch``), generated chunk by
chunk, and f_v = dz_v/da_v = logit_scale (1 - (z_v / c)^2) (logit_scale without soft-cap),
    u = sum_{v != y} e^{z_v - m} (f_v / logit_scale) P[:, v]    rescaled by a like r,
    sketch = logit_scale (u / s - (1 - p_y) (f_y / logit_scale) P[:, y]) = P (f ⊙ (p - e_y)).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..sketch.projection import rademacher
from ..head import TEMP_BUDGET, transform_logits_
from .common import RANK_TIE, LMHeadStats


def lm_head_stats_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                        softcap: Optional[float] = None, topk: int = 0, ignore_index: int = -100,
                        sketch_key: int = 0, sketch_dim: int = 0, vocab_block: int = 8192,
                        token_block: Optional[int] = None) -> LMHeadStats:
    n = hidden.shape[0]
    v = weight.shape[0]
    vocab_block = max(1, min(vocab_block, v))
    token_block = token_block or max(1, TEMP_BUDGET // vocab_block)
    dev = hidden.device
    f32 = dict(dtype=torch.float32, device=dev)
    lse, nll, brier, entropy = (torch.zeros(n, **f32) for _ in range(4))
    rank = torch.zeros(n, dtype=torch.int32, device=dev)
    brier_topk, entropy_topk = ((torch.zeros(n, **f32) for _ in range(2)) if topk else (None, None))
    sketch = torch.zeros(n, sketch_dim, **f32) if sketch_dim else None
    sketch_rows = torch.arange(sketch_dim, device=dev)
    z_buf, e_buf = (torch.empty(min(n, token_block) * vocab_block, **f32) for _ in range(2))

    for t0 in range(0, n, token_block):
        t1 = min(n, t0 + token_block)
        h = hidden[t0:t1].float()
        ignored = targets[t0:t1] == ignore_index
        y = targets[t0:t1].masked_fill(ignored, 0)
        zy = (h * weight[y].float()).sum(1)
        if bias is not None:
            zy += bias[y].float()
        zy = transform_logits_(zy, logit_scale, softcap)

        above = zy + RANK_TIE * zy.abs().clamp(min=1)  # z_v > above: strictly greater than z_y
        m = zy.clone()
        r, r1, r2 = (torch.zeros(t1 - t0, **f32) for _ in range(3))
        gt = torch.zeros(t1 - t0, dtype=torch.int32, device=dev)
        u = torch.zeros(t1 - t0, sketch_dim, **f32) if sketch_dim else None
        top = None
        rows = torch.arange(t1 - t0, device=dev)
        for v0 in range(0, v, vocab_block):
            v1 = min(v, v0 + vocab_block)
            z = torch.mm(h, weight[v0:v1].float().T, out=z_buf[:(t1 - t0) * (v1 - v0)].view(t1 - t0, v1 - v0))
            if bias is not None:
                z += bias[v0:v1].float()
            transform_logits_(z, logit_scale, softcap)
            if sketch_dim and softcap is not None:
                f = 1 - (z / softcap).square()  # f_v / logit_scale
            here = (y >= v0) & (y < v1)
            ri, ci = rows[here], y[here] - v0
            z[ri, ci] = zy[here]
            gt += (z > above[:, None]).sum(1, dtype=torch.int32)
            if topk:
                cand = z if top is None else torch.cat([top, z], 1)
                top = cand.topk(min(topk, cand.shape[1]), dim=1).values
            m_new = torch.maximum(m, z.amax(1))
            a = torch.exp(m - m_new)
            z -= m_new[:, None]
            e = torch.exp(z, out=e_buf[:z.numel()].view_as(z))
            e[ri, ci] = 0  # the sums run over v != y
            r1 = a * (r1 + (m - m_new) * r) + torch.linalg.vecdot(e, z)
            r = a * r + e.sum(1)
            r2 = a * a * r2 + torch.linalg.vecdot(e, e)
            if sketch_dim:
                signs = rademacher(sketch_key, sketch_rows, torch.arange(v0, v1, device=dev))
                u = a[:, None] * u + (e if softcap is None else e * f) @ signs.T
            m = m_new

        d_y = zy - m  # <= 0
        e_y = torch.exp(d_y)
        s = e_y + r
        log_s = torch.log(s)
        nll_b = torch.where(d_y > -60, torch.log1p(r / e_y), log_s - d_y)
        lse[t0:t1] = m + log_s
        nll[t0:t1] = nll_b
        brier[t0:t1] = torch.expm1(-nll_b).square() + r2 / (s * s)  # (1 - p_y)^2 + sum_{v!=y} p_v^2
        entropy[t0:t1] = (log_s - (r1 + e_y * d_y) / s).clamp(0, math.log(v))
        rank_b = 1 + gt
        rank[t0:t1] = rank_b
        if sketch_dim:
            f_y = 1 if softcap is None else 1 - (zy / softcap).square()
            p_y = rademacher(sketch_key, sketch_rows, y).T
            q = torch.expm1(-nll_b) * f_y  # -(1 - p_y) f_y / logit_scale
            sketch[t0:t1] = (u / s[:, None] + q[:, None] * p_y) * (logit_scale / sketch_dim ** 0.5)
        if topk:
            lse_k = torch.logsumexp(top, dim=1)
            p_k = torch.exp(top - lse_k[:, None])
            p_y = torch.exp(zy - lse_k) * (rank_b <= topk)
            brier_topk[t0:t1] = 1 - 2 * p_y + (p_k * p_k).sum(1)
            entropy_topk[t0:t1] = -(p_k * (top - lse_k[:, None])).sum(1)

    ignored = targets == ignore_index
    for x in (lse, nll, brier, entropy, rank) + ((brier_topk, entropy_topk) if topk else ()):
        x.masked_fill_(ignored, 0)
    if sketch_dim:
        sketch.masked_fill_(ignored[:, None], 0)
    return LMHeadStats(lse=lse, nll=nll, brier=brier, entropy=entropy, rank=rank, brier_topk=brier_topk,
                       entropy_topk=entropy_topk, sketch=sketch)
