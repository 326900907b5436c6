"""Weighted cross-entropy through the LM head (SPEC §6): sum_t w_t nll_t / normalizer with gradients
for hidden, weight and bias, without materialising logits.

- ``naive.py``: full-logits reference (autograd; the oracle in tests, O(N V) memory)
- ``torch_chunked.py``: token blocks over the whole vocabulary, gradients formed in the forward (CPU)
- ``fused.py``: Triton forward (online logsumexp over vocabulary tiles) and tile-recomputing backward (CUDA)
"""
from __future__ import annotations

from typing import Optional

import torch

from .common import check_inputs, token_coefficients
from .naive import weighted_ce_naive
from .torch_chunked import WeightedCETorch

try:
    from .fused import WeightedCETriton
except ImportError:  # triton is not installed: the torch path serves every device
    WeightedCETriton = None

__all__ = ["weighted_ce", "weighted_ce_naive", "WeightedCETorch", "WeightedCETriton", "BACKENDS"]

BACKENDS = ("auto", "torch", "triton")


def weighted_ce(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                token_weights: Optional[torch.Tensor] = None, normalizer=1.0, *, bias: Optional[torch.Tensor] = None,
                logit_scale: float = 1.0, softcap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None,
                traj_weights: Optional[torch.Tensor] = None, ignore_index: int = -100,
                backend: str = "auto") -> torch.Tensor:
    """fp32 scalar sum_t w_t nll_t / normalizer; see ``lark_fast.train.weighted_sft_loss``.

    Tokens whose coefficient is 0 (ignored, or weight 0) are dropped before the op runs: they cost
    nothing and their rows of dH are 0. ``backend="auto"`` is Triton on CUDA, torch elsewhere.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    check_inputs(hidden, weight, targets, token_weights, normalizer, bias, logit_scale, softcap, cu_seqlens,
                 traj_weights, ignore_index)
    if backend == "triton" and WeightedCETriton is None:
        raise ValueError("backend: 'triton' needs the triton package (pip install 'lark_fast[gpu]')")
    use_triton = backend == "triton" or (backend == "auto" and hidden.is_cuda and WeightedCETriton is not None)
    coef = token_coefficients(targets, token_weights, normalizer, cu_seqlens, traj_weights, ignore_index)
    kept = coef != 0
    if not bool(kept.all()):
        idx = kept.nonzero()[:, 0]
        hidden, targets, coef = hidden[idx], targets[idx], coef[idx]
    fn = WeightedCETriton if use_triton else WeightedCETorch
    return fn.apply(hidden, weight, bias, targets, coef, float(logit_scale),
                    None if softcap is None else float(softcap))
