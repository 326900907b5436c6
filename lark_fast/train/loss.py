"""The weighted SFT loss through the LM head (docs/method.md §6.1, §6.3)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import ops


def weighted_sft_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      token_weights: Optional[torch.Tensor], normalizer, *, bias: Optional[torch.Tensor] = None,
                      cu_seqlens: Optional[torch.Tensor] = None, traj_weights: Optional[torch.Tensor] = None,
                      logit_scale: float = 1.0, softcap: Optional[float] = None, ignore_index: int = -100,
                      backend: Optional[str] = None) -> torch.Tensor:
    """sum_t w_t nll_t / normalizer through the LM head, fp32 scalar, never a [tokens, vocab] tensor.

    hidden [N, d] (the LM head's input; bf16/fp16/fp32, accumulated in fp32), weight [V, d], targets
    [N] (``ignore_index`` = no loss), token_weights [N] or None (1), normalizer > 0 (a number or a
    one-element tensor). With ``cu_seqlens`` [S + 1] and ``traj_weights`` [S], w_t is further multiplied
    by its trajectory's weight. Logits are softcap(logit_scale * (W h + b)) (``LMHead.from_model`` gives
    the model's scale and cap). Gradients flow to hidden, weight and bias; weights are constants.
    ``backend`` as ``lark_fast.ops`` (None: $LARK_FAST_BACKEND, else "auto": Triton on CUDA, chunked torch
    elsewhere); both deterministic.
    """
    return ops.weighted_ce(hidden, weight, targets, token_weights, normalizer, bias=bias, logit_scale=logit_scale,
                       softcap=softcap, cu_seqlens=cu_seqlens, traj_weights=traj_weights, ignore_index=ignore_index,
                       backend=backend)
