"""Readable reference: full [N, V] logits and autograd, as an HF model's default loss does.

Used by tests (in float64, as the oracle) and benchmarks; never by training. Memory O(N * V).
"""
from __future__ import annotations

from typing import Optional

import torch


def weighted_ce_naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      token_weights: Optional[torch.Tensor], normalizer, *, bias: Optional[torch.Tensor] = None,
                      logit_scale: float = 1.0, softcap: Optional[float] = None, ignore_index: int = -100,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sum_t w_t nll_t / normalizer over non-ignored tokens, differentiable by autograd."""
    z = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        z = z + bias.to(dtype)
    z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    nll = torch.nn.functional.cross_entropy(z, targets, ignore_index=ignore_index, reduction="none")
    w = torch.ones_like(nll) if token_weights is None else token_weights.to(dtype)
    return (w * nll).sum() / normalizer
