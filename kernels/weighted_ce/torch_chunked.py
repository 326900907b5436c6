"""Chunked torch path of the weighted cross-entropy (CPU default): forward and backward in one pass.

Tokens are taken a block at a time with the whole vocabulary: the block's logits [token_block, V]
(fp32, at most TEMP_BUDGET elements) give lse and nll, and, when any input needs a gradient, become
G in place (common.py): G = k (softmax(z) - onehot(y)) dz/da. The block's dH = G W is written and
dW += G^T H, db += sum G accumulate in fp32 while the logits are still in cache, so the backward only
scales the stored gradients by the incoming grad_output: three GEMMs in all, like an unfused loss,
and no [N, V] tensor. Blocks have a fixed size independent of N and are summed in order:
deterministic.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..head import TEMP_BUDGET


class WeightedCETorch(torch.autograd.Function):
    """loss = sum_t k_t nll_t for tokens whose targets are all valid (the wrapper drops ignored ones)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                coef: torch.Tensor, logit_scale: float, softcap: Optional[float],
                token_block: Optional[int] = None) -> torch.Tensor:
        n, d = hidden.shape
        v = weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grads = need_h or need_w or need_b
        f32 = dict(dtype=torch.float32, device=hidden.device)
        w32 = weight.float()
        b32 = None if bias is None else bias.float()
        token_block = token_block or max(1, TEMP_BUDGET // v)
        loss = torch.zeros((), dtype=torch.float64, device=hidden.device)
        dh = torch.empty_like(hidden) if need_h else None
        dw = torch.zeros(v, d, **f32) if need_w else None
        db = torch.zeros(v, **f32) if need_b else None
        for t0 in range(0, n, token_block):
            t1 = min(n, t0 + token_block)
            h = hidden[t0:t1].float()
            y = targets[t0:t1]
            k = coef[t0:t1]
            z = h @ w32.T
            if b32 is not None:
                z += b32
            z.mul_(logit_scale)
            slope = None
            if softcap is not None:
                z.div_(softcap).tanh_()
                if grads:
                    slope = torch.square(z).neg_().add_(1).mul_(logit_scale)  # dz/da = s (1 - tanh^2)
                z.mul_(softcap)
            lse = torch.logsumexp(z, dim=1)
            rows = torch.arange(t1 - t0, device=hidden.device)
            loss += (k.double() * (lse - z[rows, y]).double()).sum()
            if not grads:
                continue
            g = z.sub_(lse[:, None]).exp_()  # softmax, in place
            g[rows, y] -= 1
            g.mul_(k[:, None])
            if slope is not None:
                g.mul_(slope)
            elif logit_scale != 1.0:
                g.mul_(logit_scale)
            if need_h:
                dh[t0:t1] = (g @ w32).to(hidden.dtype)
            if need_w:
                dw.addmm_(g.T, h)
            if need_b:
                db += g.sum(0)
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return loss.float()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dh, dw, db = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        g = grad_out.float()
        unit = bool(g == 1)
        if dh is not None and not unit:
            dh = (dh.float() * g).to(dh.dtype)
        if dw is not None:
            dw = (dw if unit else dw * g).to(w_dtype)
        if db is not None:
            db = (db if unit else db * g).to(b_dtype)
        return dh, dw, db, None, None, None, None, None
