"""Fused CPU path of the LM-head statistics: the C++ kernel ``lark_fast._C.lm_head_stats``
(``csrc/lm_head_stats.hpp``). No [N, V] tensor exists: a register-blocked GEMM writes each vocabulary
tile's logits into an L1-sized buffer and one fused fold reads them back into every statistic.

The kernel keeps ``torch_chunked.py``'s recurrences (docs/method.md §2, the sketch §4): per token a running
max m initialised at z_y, r = sum_{v != y} e^{z_v - m}, r1 = sum e^{z_v - m} (z_v - m),
r2 = sum e^{2 (z_v - m)}, the count of z_v > z_y + RANK_TIE max(1, |z_y|), the K largest logits and, with
a sketch, u = sum_{v != y} e^{z_v - m} f'_v P[:, v]; a new max m' rescales by a = e^{m - m'}. The final
statistics are computed from these in double precision. Logits are summed in fp32 whatever the input
dtype (bf16 weights are read as bf16 and widened; fp16 or fp64 weights are copied to fp32 first).

Deterministic: a token's results depend only on its own hidden state, the head and the instruction set
(``simd()``), never on the thread count or on the other tokens of the batch.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import _C
from .common import LMHeadStats

AVAILABLE = hasattr(_C, "lm_head_stats")  # False for an extension built before the kernel existed


def simd() -> str:
    """The instruction set of the kernel on this CPU: "avx512", "avx2", "generic" (the architecture's
    baseline) or "scalar" (compilers without GCC vector extensions); LARK_FAST_SIMD caps it."""
    return _C.lm_head_simd()


def lm_head_stats_cpu(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                      bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                      softcap: Optional[float] = None, topk: int = 0, ignore_index: int = -100,
                      sketch_key: int = 0, sketch_dim: int = 0, threads: Optional[int] = None) -> LMHeadStats:
    """The statistics of ``lark_fast.ops.lm_head_stats`` from CPU tensors. ``threads``: OpenMP threads
    (default ``torch.get_num_threads()``). Raises ValueError naming the argument for a wrong device,
    layout or dtype, and (from the kernel) for out-of-range targets or options."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets), ("bias", bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.device.type != "cpu"):
            where = t.device if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: the cpu backend takes CPU tensors, got {where}")
    if hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(f"hidden: expected a floating tensor [N, d], got {tuple(hidden.shape)} {hidden.dtype}")
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight: expected a floating tensor [V, d], got {tuple(weight.shape)} {weight.dtype}")
    if targets.dim() != 1 or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets: expected an integer tensor [N], got {tuple(targets.shape)} {targets.dtype}")
    if bias is not None and (bias.dim() != 1 or not bias.is_floating_point()):
        raise ValueError(f"bias: expected a floating tensor [V], got {tuple(bias.shape)} {bias.dtype}")

    h = _rows_contiguous(hidden.detach().float())
    w = weight.detach()
    if w.dtype not in (torch.float32, torch.bfloat16):
        w = w.float()
    w = _rows_contiguous(w)
    out = _C.lm_head_stats(
        h.numpy(), w.numpy() if w.dtype == torch.float32 else w.view(torch.int16).numpy(),
        targets.detach().to(torch.int64).contiguous().numpy(),
        bias=None if bias is None else bias.detach().float().contiguous().numpy(),
        weight_bf16=w.dtype == torch.bfloat16, logit_scale=float(logit_scale),
        softcap=None if softcap is None else float(softcap), topk=topk, ignore_index=ignore_index,
        sketch_dim=sketch_dim, sketch_key=sketch_key, threads=torch.get_num_threads() if threads is None else threads)
    lse, nll, brier, entropy, rank, brier_topk, entropy_topk, sketch = (
        None if x is None else torch.from_numpy(x) for x in out)
    return LMHeadStats(lse=lse, nll=nll, brier=brier, entropy=entropy, rank=rank, brier_topk=brier_topk,
                       entropy_topk=entropy_topk, sketch=sketch)


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when each row is contiguous (any row stride), else a contiguous copy."""
    return x if x.shape[-1] <= 1 or x.stride(-1) == 1 else x.contiguous()
