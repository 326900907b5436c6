"""Streaming torch path of the LM-head backward: logits are recomputed chunk by chunk from the
forward's lse, so no [N, V] tensor exists (largest temporary [token_block, vocab_block] fp32).

For the head's output a_t = W h_t + b and logits z = softcap(logit_scale * a):
    d_tv = grad_t * f_tv * (p_tv - [v = y_t]),   p_tv = exp(z_tv - lse_t),
    f_tv = dz/da = logit_scale * (1 - (z_tv / c)^2) with soft-cap c, else logit_scale,
    dH_t = sum_v d_tv W_v.
No gradient with respect to W or b is formed. ``output_grad_chunks`` yields the blocks of d, also
for exact per-trajectory norms of the head's weight gradient.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from ..head import TEMP_BUDGET, transform_logits_


def output_grad_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                       grad: torch.Tensor, *, bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                       softcap: Optional[float] = None, ignore_index: int = -100, vocab_block: int = 8192,
                       token_block: Optional[int] = None) -> Iterator[tuple]:
    """Yields ``(t0, t1, v0, v1, d)``: d [t1 - t0, v1 - v0] fp32, the block of d_tv defined above."""
    n, v = hidden.shape[0], weight.shape[0]
    vocab_block = max(1, min(vocab_block, v))
    token_block = token_block or max(1, TEMP_BUDGET // vocab_block)
    for t0 in range(0, n, token_block):
        t1 = min(n, t0 + token_block)
        h = hidden[t0:t1].float()
        kept = targets[t0:t1] != ignore_index
        g = grad[t0:t1].float()
        y = targets[t0:t1].masked_fill(~kept, -1)
        lse_b = lse[t0:t1].float().masked_fill(~kept, float("inf"))  # ignored rows: d = 0
        rows = torch.arange(t1 - t0, device=hidden.device)
        for v0 in range(0, v, vocab_block):
            v1 = min(v, v0 + vocab_block)
            a = h @ weight[v0:v1].float().T
            if bias is not None:
                a += bias[v0:v1].float()
            z = transform_logits_(a, logit_scale, softcap)
            d = torch.exp(z - lse_b[:, None])
            here = (y >= v0) & (y < v1)
            d[rows[here], y[here] - v0] -= 1
            if softcap is not None:
                d *= logit_scale * (1 - (z / softcap).square())
            elif logit_scale != 1.0:
                d *= logit_scale
            d *= g[:, None]
            yield t0, t1, v0, v1, d


def lm_head_backward_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                           grad: torch.Tensor, **kwargs) -> torch.Tensor:
    """dH [N, d] in hidden's dtype; keyword arguments as ``output_grad_chunks``."""
    dh = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    for t0, t1, v0, v1, d in output_grad_chunks(hidden, weight, targets, lse, grad, **kwargs):
        dh[t0:t1] += d @ weight[v0:v1].float()
    return dh.to(hidden.dtype)
