"""Shared pieces of the weighted cross-entropy op: input checks and per-token coefficients.

With logits z = softcap(logit_scale * (W h + b)) (softcap(u) = c tanh(u / c) when a cap c is given)
and nll_t = logsumexp(z_t) - z_{t, y_t}, the op computes

    loss = sum_t k_t nll_t,    k_t = w_t / normalizer  (0 for ignored tokens)

and its gradients through G = dloss/d(W h + b) [N, V], formed one block at a time, never whole:

    G_tv = k_t (p_tv - [v = y_t]) dz_tv/da_tv,   dz/da = logit_scale (1 - (z / c)^2)  (logit_scale without a cap)
    dH = G W,   dW = G^T H,   db = sum_t G_t
"""
from __future__ import annotations

from typing import Optional

import torch

from ..head import check_head_inputs, describe


def check_inputs(hidden, weight, targets, token_weights, normalizer, bias, logit_scale, softcap, cu_seqlens,
                 traj_weights, ignore_index) -> None:
    """Validates the op's inputs; raises ValueError naming the argument."""
    check_head_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, ignore_index)
    n = hidden.shape[0]
    if token_weights is not None:
        if not isinstance(token_weights, torch.Tensor) or token_weights.shape != (n,) \
                or not token_weights.is_floating_point():
            raise ValueError(f"token_weights: expected a floating tensor [{n}] or None, got {describe(token_weights)}")
        if token_weights.device != hidden.device:
            raise ValueError(f"token_weights: on {token_weights.device}, hidden on {hidden.device}")
        if not bool(torch.isfinite(token_weights).all()):
            raise ValueError("token_weights: contains NaN or inf")
    if traj_weights is not None:
        if cu_seqlens is None:
            raise ValueError("traj_weights: needs cu_seqlens to know which tokens belong to which trajectory")
        s = cu_seqlens.numel() - 1
        if not isinstance(traj_weights, torch.Tensor) or traj_weights.shape != (s,) \
                or not traj_weights.is_floating_point():
            raise ValueError(f"traj_weights: expected a floating tensor [{s}] (one per cu_seqlens segment), "
                             f"got {describe(traj_weights)}")
        if traj_weights.device != hidden.device:
            raise ValueError(f"traj_weights: on {traj_weights.device}, hidden on {hidden.device}")
        if not bool(torch.isfinite(traj_weights).all()):
            raise ValueError("traj_weights: contains NaN or inf")
    if isinstance(normalizer, torch.Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"normalizer: expected a number or a one-element tensor, got {describe(normalizer)}")
        value = float(normalizer)
    elif isinstance(normalizer, (int, float)) and not isinstance(normalizer, bool):
        value = float(normalizer)
    else:
        raise ValueError(f"normalizer: expected a positive number, got {normalizer!r}")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"normalizer: expected a positive finite number, got {value!r}")


def token_coefficients(targets: torch.Tensor, token_weights: Optional[torch.Tensor], normalizer,
                       cu_seqlens: Optional[torch.Tensor], traj_weights: Optional[torch.Tensor],
                       ignore_index: int) -> torch.Tensor:
    """k_t = token_weights_t * traj_weights_{segment(t)} / normalizer, fp32 [N]; 0 where ignored."""
    n = targets.shape[0]
    k = torch.ones(n, dtype=torch.float64, device=targets.device) if token_weights is None \
        else token_weights.to(torch.float64)
    if traj_weights is not None:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
        k = k * torch.repeat_interleave(traj_weights.to(torch.float64), lengths, output_size=n)
    norm = normalizer.to(device=targets.device, dtype=torch.float64).reshape(()) \
        if isinstance(normalizer, torch.Tensor) else float(normalizer)
    return (k / norm).masked_fill(targets == ignore_index, 0).to(torch.float32)
