"""The LM-head backward op: backend choice for dH of the per-token nll."""
from __future__ import annotations

from typing import Optional

import torch

from ..backend import choose_backend
from .torch_chunked import lm_head_backward_torch

try:
    from .fused import lm_head_backward_triton
except ImportError:  # triton is optional
    lm_head_backward_triton = None

AVAILABLE = ("auto", "torch", "triton")  # no C++ kernel: "auto" is torch on CPU



def lm_head_backward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                     grad: torch.Tensor, *, bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                     softcap: Optional[float] = None, ignore_index: int = -100, backend: str = "auto") -> torch.Tensor:
    """dH [N, d] (hidden's dtype) of sum_t grad_t nll_t, with ``lse`` [N] from ``lm_head_stats`` on the
    same inputs (docs/method.md §2.7). No weight gradient is formed. ``backend`` as ``lm_head_stats``."""
    backend = choose_backend("lm_head_backward", backend, hidden.device, AVAILABLE)
    n = hidden.shape[0]
    for name, t in (("lse", lse), ("grad", grad)):
        if not isinstance(t, torch.Tensor) or t.shape != (n,):
            raise ValueError(f"{name}: expected a tensor [{n}], got {getattr(t, 'shape', type(t).__name__)}")
    impl = lm_head_backward_triton if backend == "triton" else lm_head_backward_torch
    return impl(hidden, weight, targets, lse, grad, bias=bias, logit_scale=logit_scale, softcap=softcap,
                ignore_index=ignore_index)
