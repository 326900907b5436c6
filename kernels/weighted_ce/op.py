"""The weighted cross-entropy op: validation, dropping zero-coefficient tokens, backend choice."""
from __future__ import annotations

from typing import Optional

import torch

from ..backend import choose_backend
from .common import check_inputs, token_coefficients
from .torch_chunked import WeightedCETorch

try:
    from .fused import WeightedCETriton
except ImportError:  # triton is not installed: the torch path serves every device
    WeightedCETriton = None

AVAILABLE = ("auto", "torch", "triton")  # no C++ kernel: "auto" is torch on CPU



def weighted_ce(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                token_weights: Optional[torch.Tensor] = None, normalizer=1.0, *, bias: Optional[torch.Tensor] = None,
                logit_scale: float = 1.0, softcap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None,
                traj_weights: Optional[torch.Tensor] = None, ignore_index: int = -100,
                backend: str = "auto") -> torch.Tensor:
    """fp32 scalar sum_t w_t nll_t / normalizer (docs/method.md §6.3); see ``lark_fast.train.weighted_sft_loss``.

    Tokens whose coefficient is 0 (ignored, or weight 0) are dropped before the op runs: they cost
    nothing and their rows of dH are 0. ``backend`` as ``lm_head_stats`` (``kernels/backend.py``).
    """
    backend = choose_backend("weighted_ce", backend, hidden.device if isinstance(hidden, torch.Tensor)
                             else torch.device("cpu"), AVAILABLE)
    check_inputs(hidden, weight, targets, token_weights, normalizer, bias, logit_scale, softcap, cu_seqlens,
                 traj_weights, ignore_index)
    coef = token_coefficients(targets, token_weights, normalizer, cu_seqlens, traj_weights, ignore_index)
    kept = coef != 0
    if not bool(kept.all()):
        idx = kept.nonzero()[:, 0]
        hidden, targets, coef = hidden[idx], targets[idx], coef[idx]
    fn = WeightedCETriton if backend == "triton" else WeightedCETorch
    return fn.apply(hidden, weight, bias, targets, coef, float(logit_scale),
                    None if softcap is None else float(softcap))
