"""Readable reference: the full [N, V] logits, softmax and output gradient. Memory O(N V)."""
from __future__ import annotations

from typing import Optional

import torch

from ..head import transform_logits_


def lm_head_backward_naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor, *,
                           bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                           softcap: Optional[float] = None, ignore_index: int = -100) -> torch.Tensor:
    a = hidden.float() @ weight.float().T
    if bias is not None:
        a += bias.float()
    z = transform_logits_(a.clone(), logit_scale, softcap)
    p = torch.softmax(z, dim=1)
    kept = targets != ignore_index
    onehot = torch.nn.functional.one_hot(targets.masked_fill(~kept, 0), weight.shape[0]).float()
    f = logit_scale * (1 - (z / softcap) ** 2) if softcap is not None else logit_scale  # dz / da
    d = (grad.float() * kept)[:, None] * f * (p - onehot)  # grad_t * d nll_t / d a_t
    return (d @ weight.float()).to(hidden.dtype)
