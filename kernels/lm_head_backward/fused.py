"""Fused Triton path of the LM-head backward: dH = Σ_v d_tv W_v with d as in ``torch_chunked.py``,
logits recomputed tile by tile from the forward's lse; neither [N, V] nor any dW exists.

Grid: one program per token block. It walks the vocabulary in tiles of BLOCK_V columns:
  logits  acc = h W_tileᵀ over d chunks, z = softcap(logit_scale (acc + b))
  grads   d = f (e^{z - lse_t} - [v = y_t]),  f = logit_scale (1 - (z / c)^2) (or logit_scale)
  dH      for each d chunk: dH[rows, chunk] += grad_t (d W_tile[:, chunk])
dH is fp32 in global memory and owned by the program's rows alone, so the read-modify-write needs
no atomics and every row sums its tiles in vocabulary order: deterministic and batch-invariant.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..backend import INTERPRET
from ..triton_utils import LaunchConfig, dot_precision, interpreter_blocks, logits_tile


def default_config(hidden: torch.Tensor, weight: torch.Tensor) -> LaunchConfig:
    if INTERPRET:
        return LaunchConfig(**interpreter_blocks(hidden, weight))
    if hidden.dtype == weight.dtype and hidden.dtype in (torch.bfloat16, torch.float16):
        return LaunchConfig(block_n=64, block_v=256, block_d=32, num_stages=2)  # dH traffic: half the weight tile's
    return LaunchConfig(block_n=64, block_v=128, block_d=32, num_stages=2)  # both: no spills on sm_90 (ptxas -v)


@triton.jit(do_not_specialize=["N", "V"])
def _backward_kernel(H, W, Bias, Y, Lse, G, DH, N, V, D, stride_h, stride_w, logit_scale, softcap, ignore_index,
                     HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(Y + rows, mask=row_ok, other=ignore_index)
    keep = row_ok & (y != ignore_index)
    g = tl.where(keep, tl.load(G + rows, mask=row_ok, other=0.0).to(tl.float32), 0.0)
    lse = tl.where(keep, tl.load(Lse + rows, mask=row_ok, other=0.0), float("inf"))  # ignored rows: p = 0
    dd = tl.arange(0, BLOCK_D)
    vv = tl.arange(0, BLOCK_V)
    dh_ptr = DH + rows[:, None] * D + dd[None, :]

    for v0 in range(0, V, BLOCK_V):
        cols = (v0 + vv).to(tl.int64)  # int64: cols * stride_w can pass 2^31
        col_ok = cols < V
        z, t = logits_tile(H, W, Bias, rows, row_ok, cols, col_ok, D, stride_h, stride_w, logit_scale, softcap,
                            HAS_BIAS, HAS_SOFTCAP, DOT_FP32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
        d = tl.exp(z - lse[:, None]) - (cols[None, :] == y[:, None]).to(tl.float32)
        if HAS_SOFTCAP:
            d = d * (logit_scale * (1.0 - t * t))
        else:
            d = d * logit_scale
        # g multiplies the tile's product, not d: a small g (a mean over n tokens) times a tail
        # probability would underflow in fp16 operands
        d = tl.where(col_ok[None, :], d, 0.0)
        if not DOT_FP32:
            d = d.to(W.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            d_ok = dd < D - d0
            w = tl.load(W + cols[:, None] * stride_w + (d0 + dd)[None, :], mask=col_ok[:, None] & d_ok[None, :],
                        other=0.0)
            if DOT_FP32:
                w = w.to(tl.float32)
            here = row_ok[:, None] & d_ok[None, :]
            dh = tl.load(dh_ptr + d0, mask=here, other=0.0)
            dh += g[:, None] * tl.dot(d, w, input_precision=PRECISION)
            tl.store(dh_ptr + d0, dh, mask=here)


def lm_head_backward_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                            grad: torch.Tensor, *, bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                            softcap: Optional[float] = None, ignore_index: int = -100,
                            config: Optional[LaunchConfig] = None) -> torch.Tensor:
    """dH [N, d] in hidden's dtype. Inputs as ``lark_fast.ops.lm_head_stats`` plus the forward's
    ``lse`` [N] and the upstream gradient of the per-token nll ``grad`` [N]; this checks shapes."""
    n, d = hidden.shape
    v = weight.shape[0]
    assert weight.shape == (v, d) and targets.shape == (n,), "shapes: hidden [N, d], weight [V, d], targets [N]"
    assert lse.shape == (n,) and grad.shape == (n,), "shapes: lse [N], grad [N]"
    assert bias is None or bias.shape == (v,), "bias: expected [V]"
    cfg = config or default_config(hidden, weight)
    hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    dh = torch.zeros(n, d, dtype=torch.float32, device=hidden.device)
    if n == 0:
        return dh.to(hidden.dtype)
    dot_fp32, precision = dot_precision(hidden, weight)
    _backward_kernel[(triton.cdiv(n, cfg.block_n),)](
        hidden, weight, bias if bias is not None else lse, targets.contiguous(), lse.float().contiguous(),
        grad.contiguous(), dh, n, v, d, hidden.stride(0), weight.stride(0), float(logit_scale),
        float(softcap) if softcap is not None else 1.0, ignore_index,
        HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, DOT_FP32=dot_fp32, PRECISION=precision,
        BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_D=cfg.block_d, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return dh.to(hidden.dtype)
