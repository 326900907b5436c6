"""The LM-head statistics op: validation, backend choice, per-segment sums and the differentiable nll."""
from __future__ import annotations

from typing import Optional

import torch

from ..backend import BACKENDS, choose_backend
from ..lm_head_backward import lm_head_backward
from .common import LMHeadStats, check_inputs, reduce_segments
from .cpu import AVAILABLE as CPU_AVAILABLE
from .cpu import lm_head_stats_cpu
from .torch_chunked import lm_head_stats_torch

try:
    from .fused import lm_head_stats_triton
except ImportError:  # triton is optional
    lm_head_stats_triton = None

MAX_SKETCH = 256
AVAILABLE = tuple(b for b in BACKENDS if b != "cpu" or CPU_AVAILABLE)
IMPLEMENTATIONS = {"torch": lm_head_stats_torch, "triton": lm_head_stats_triton, "cpu": lm_head_stats_cpu}


def lm_head_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                  bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                  softcap: Optional[float] = None, cu_seqlens: Optional[torch.Tensor] = None,
                  topk: int = 0, ignore_index: int = -100, sketch_dim: int = 0, sketch_key: int = 0,
                  backend: str = "auto") -> LMHeadStats:
    """Per-token statistics of z = softcap(logit_scale * (weight @ h + bias)) against ``targets``
    (docs/method.md §2).

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
    the same vocabulary sweep (docs/method.md §4.4).

    When ``hidden`` requires grad (and grad mode is on), ``nll`` is differentiable with respect to
    it: the backward recomputes the logits from ``lse`` tile by tile (``lm_head_backward``).
    ``weight`` and ``bias`` must not require grad: no weight gradient is formed.

    ``backend`` (``kernels/backend.py``): "auto" runs the fused Triton kernel where it runs (CUDA), the
    fused C++ kernel on CPU tensors and the chunked torch path otherwise; "torch" / "triton" / "cpu"
    force one. The backward recomputes with Triton after "triton", with torch otherwise.
    """
    backend = choose_backend("lm_head_stats", backend, hidden.device if isinstance(hidden, torch.Tensor)
                             else torch.device("cpu"), AVAILABLE)
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
    impl = IMPLEMENTATIONS[backend]
    options = dict(bias=bias, logit_scale=float(logit_scale), softcap=None if softcap is None else float(softcap),
                   ignore_index=ignore_index)
    with torch.no_grad():
        stats = impl(hidden.detach(), weight, targets, topk=topk, sketch_dim=sketch_dim, sketch_key=sketch_key,
                     **options)
        if cu_seqlens is not None:
            stats.segments = reduce_segments(stats, targets, cu_seqlens, ignore_index)
    if differentiable:
        backward = "triton" if backend == "triton" else "torch"
        stats.nll = _HeadNLL.apply(hidden, stats.nll, stats.lse, weight, targets, backward, options)
    return stats


class _HeadNLL(torch.autograd.Function):
    """nll as a function of hidden: forward passes the computed values through, backward gives
    dH_t = g_t sum_v f_tv (p_tv - [v = y_t]) W_v from the saved lse (``lm_head_backward``)."""

    @staticmethod
    def forward(ctx, hidden, nll, lse, weight, targets, backend, options):
        ctx.save_for_backward(hidden, lse, weight, targets)
        ctx.backend, ctx.options = backend, options
        return nll.clone()

    @staticmethod
    def backward(ctx, grad):
        hidden, lse, weight, targets = ctx.saved_tensors
        dh = lm_head_backward(hidden.detach(), weight, targets, lse, grad.float().contiguous(), backend=ctx.backend,
                              **ctx.options)
        return dh, None, None, None, None, None, None
