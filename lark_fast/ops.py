"""Public ops. ``lm_head_stats`` is the fused LM-head statistics op (SPEC §2); its ``nll`` is
differentiable with respect to the hidden states through a backward that recomputes logits tile
by tile (``kernels/lm_head_backward``) and never forms a weight gradient."""
from __future__ import annotations

from typing import Optional

import torch

from .kernels.lm_head_backward import lm_head_backward_torch, lm_head_backward_triton
from .kernels.lm_head_stats import (CPU_AVAILABLE, TRITON_INTERPRET, LMHeadStats, SegmentSums, check_inputs,
                                     lm_head_stats_cpu, lm_head_stats_torch, lm_head_stats_triton, reduce_segments)

__all__ = ["lm_head_stats", "LMHeadStats", "SegmentSums"]

MAX_SKETCH = 256

_BACKENDS = ("auto", "torch", "triton", "cpu")


def _use_triton(backend: str, device: torch.device) -> bool:
    runnable = lm_head_stats_triton is not None and (device.type == "cuda" or TRITON_INTERPRET)
    if backend == "triton" and not runnable:
        raise ValueError("backend='triton' needs triton installed and CUDA tensors (or TRITON_INTERPRET=1 "
                         "set before lark_fast is imported)")
    return backend == "triton" or (backend == "auto" and runnable)


def _use_cpu(backend: str, device: torch.device) -> bool:
    runnable = CPU_AVAILABLE and device.type == "cpu"
    if backend == "cpu" and not runnable:
        raise ValueError("backend='cpu' needs CPU tensors (and lark_fast._C built with the lm_head_stats kernel)")
    return backend == "cpu" or (backend == "auto" and runnable)


def lm_head_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                  bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                  softcap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None,
                  topk: int = 0, ignore_index: int = -100, sketch_dim: int = 0, sketch_key: int = 0,
                  backend: str = "auto") -> LMHeadStats:
    """Per-token statistics of z = softcap(logit_scale * (weight @ h + bias)) against ``targets``.

    hidden [N, d] (fp32/bf16/fp16), weight [V, d], targets [N] int (``ignore_index`` = skip),
    bias [V] or None, softcap c: z -> c tanh(z / c). Returns fp32 ``lse, nll, brier, entropy``,
    int32 ``rank`` (1 + #{v: z_v > z_y}) and, with ``topk=K`` (K <= 64), ``brier_topk`` (the
    published top-K renormalised Brier) and ``entropy_topk`` (entropy of that renormalised softmax).
    With ``cu_seqlens`` (int, [S + 1]) also float64 per-segment sums over non-ignored tokens in
    ``.segments``. Ignored tokens hold 0.
    Directions: nll, brier, rank lower = the student already predicts the token.

    ``sketch_dim=k`` adds ``sketch`` [N, k] fp32: P_out (f ⊙ (p_t - e_{y_t})), the head's output
    gradient of nll_t (f = dz/d(Wh + b), the soft-cap's derivative times logit_scale) through the
    seeded Rademacher projection P_out (k × V) with 32-bit ``sketch_key``, generated on the fly in
    the same vocabulary sweep (SPEC §4).

    When ``hidden`` requires grad (and grad mode is on), ``nll`` is differentiable with respect to
    it: the backward recomputes the logits from ``lse`` tile by tile. ``weight`` and ``bias`` must
    not require grad: no weight gradient is formed.

    ``backend``: "auto" runs the fused Triton kernel on CUDA tensors (or everywhere when triton was
    imported with TRITON_INTERPRET=1), the fused C++ kernel on CPU tensors and the chunked torch path
    otherwise; "torch" / "triton" / "cpu" force. The backward always recomputes with torch or Triton.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    check_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, topk, ignore_index)
    if not isinstance(sketch_dim, int) or isinstance(sketch_dim, bool) or not 0 <= sketch_dim <= MAX_SKETCH:
        raise ValueError(f"sketch_dim: expected an int in [0, {MAX_SKETCH}], got {sketch_dim!r}")
    if not isinstance(sketch_key, int) or not 0 <= sketch_key < 2 ** 32:
        raise ValueError(f"sketch_key: expected a 32-bit unsigned int, got {sketch_key!r}")
    differentiable = torch.is_grad_enabled() and hidden.requires_grad
    for name, t in (("weight", weight), ("bias", bias)):
        if differentiable and t is not None and t.requires_grad:
            raise ValueError(f"{name}: requires grad, but lm_head_stats differentiates only with respect to hidden; "
                             "freeze the LM head (requires_grad_(False))")
    triton = _use_triton(backend, hidden.device)
    cpu = not triton and _use_cpu(backend, hidden.device)
    impl = lm_head_stats_triton if triton else lm_head_stats_cpu if cpu else lm_head_stats_torch
    options = dict(bias=bias, logit_scale=float(logit_scale), softcap=None if softcap is None else float(softcap),
                   ignore_index=ignore_index)
    with torch.no_grad():
        stats = impl(hidden.detach(), weight, targets, topk=topk, sketch_dim=sketch_dim, sketch_key=sketch_key,
                     **options)
        if cu_seqlens is not None:
            stats.segments = reduce_segments(stats, targets, cu_seqlens, ignore_index)
    if differentiable:
        backward = lm_head_backward_triton if triton else lm_head_backward_torch
        stats.nll = _HeadNLL.apply(hidden, stats.nll, stats.lse, weight, targets, backward, options)
    return stats


class _HeadNLL(torch.autograd.Function):
    """nll as a function of hidden: forward passes the computed values through, backward gives
    dH_t = g_t sum_v f_tv (p_tv - [v = y_t]) W_v from the saved lse (``kernels/lm_head_backward``)."""

    @staticmethod
    def forward(ctx, hidden, nll, lse, weight, targets, backward, options):
        ctx.save_for_backward(hidden, lse, weight, targets)
        ctx.backward_fn, ctx.options = backward, options
        return nll.clone()

    @staticmethod
    def backward(ctx, grad):
        hidden, lse, weight, targets = ctx.saved_tensors
        dh = ctx.backward_fn(hidden.detach(), weight, targets, lse, grad.float().contiguous(), **ctx.options)
        return dh, None, None, None, None, None, None
