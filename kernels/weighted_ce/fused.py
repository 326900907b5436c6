"""Triton path of the weighted cross-entropy (CUDA; the interpreter runs it on CPU for tests).

Forward, grid (token block, vocabulary split): each program streams its split's vocabulary tiles,
a = W h (+ b) accumulated in fp32 by tl.dot over d chunks, z = softcap(logit_scale * a), and keeps
per token an online logsumexp (running max m, sum s = sum_v e^{z_v - m}; a new max m' rescales s by
e^{m - m'}) and z_y from the tile holding the target. No logits leave registers. The splits merge
in a fixed order on the host: lse = M + log sum_j s_j e^{m_j - M}, M = max_j m_j; nll = lse - z_y.

Backward, per chunk of tokens: a second kernel recomputes each logit tile the same way and writes
G = k (e^{z - lse} - onehot(y)) dz/da (common.py) for the chunk [chunk, V], in the inputs' dtype; then
dH = G W and dW += G^T H run as GEMMs with fp32 accumulation, db += sum G in fp32. The chunk is
bounded by CHUNK_BYTES, so memory never scales with tokens x vocabulary. Why not fold dH and dW into
the kernel too: every logit tile feeds a whole row block of dH and column block of dW, so a fused
kernel needs atomics (run-to-run bit differences) or a recompute per d block (D / BLOCK_D times the
forward's work); with G materialised per chunk every reduction has one fixed order: deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..backend import INTERPRET
from ..triton_utils import LaunchConfig, dot_precision, grouped_ids, interpreter_blocks, logits_tile

VOCAB_PER_SPLIT = 16384
CHUNK_BYTES = 1 << 30  # the backward's G buffer [chunk, V]


@dataclass(frozen=True)
class Config(LaunchConfig):
    """Launch configuration (``triton_utils.LaunchConfig``) with the forward's vocabulary split and the
    backward's chunk of G."""

    vocab_per_split: int = VOCAB_PER_SPLIT
    chunk_bytes: int = CHUNK_BYTES


def default_config(hidden: torch.Tensor, weight: torch.Tensor) -> Config:
    if INTERPRET:
        return Config(**interpreter_blocks(hidden, weight))
    if hidden.dtype == weight.dtype and hidden.dtype in (torch.bfloat16, torch.float16):
        return Config(block_n=128, block_v=128, block_d=64)
    return Config(block_n=64, block_v=64, block_d=32)


@triton.jit(do_not_specialize=["N", "V", "n_splits"])
def _forward_kernel(H, W, Bias, Y, PartM, PartS, PartZy, N, V, D, stride_h, stride_w, logit_scale, softcap,
                    vocab_per_split, n_splits, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_N: tl.constexpr):
    pid_n, pid_s = grouped_ids(tl.program_id(0), N, n_splits, BLOCK_N, GROUP_N)

    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    zy = tl.zeros([BLOCK_N], dtype=tl.float32)
    v_begin = pid_s.to(tl.int64) * vocab_per_split
    v_end = tl.minimum(v_begin + vocab_per_split, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        z, t = logits_tile(H, W, Bias, rows, row_ok, cols, col_ok, D, stride_h, stride_w, logit_scale, softcap,
                            HAS_BIAS, HAS_SOFTCAP, DOT_FP32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        zy += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
    out = pid_s.to(tl.int64) * N + rows
    tl.store(PartM + out, m, mask=row_ok)
    tl.store(PartS + out, s, mask=row_ok)
    tl.store(PartZy + out, zy, mask=row_ok)


@triton.jit(do_not_specialize=["N", "V"])
def _grad_logits_kernel(H, W, Bias, Y, Lse, K, G, N, V, D, stride_h, stride_w, stride_g, logit_scale, softcap,
                        HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_D: tl.constexpr, GROUP_N: tl.constexpr):
    pid_n, pid_v = grouped_ids(tl.program_id(0), N, tl.cdiv(V, BLOCK_V), BLOCK_N, GROUP_N)

    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    z, t = logits_tile(H, W, Bias, rows, row_ok, cols, col_ok, D, stride_h, stride_w, logit_scale, softcap,
                        HAS_BIAS, HAS_SOFTCAP, DOT_FP32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    lse = tl.load(Lse + rows, mask=row_ok, other=0.0)
    k = tl.load(K + rows, mask=row_ok, other=0.0)
    g = tl.exp(z - lse[:, None]) - tl.where(cols[None, :] == y[:, None], 1.0, 0.0)
    slope = logit_scale
    if HAS_SOFTCAP:
        slope = logit_scale * (1.0 - t * t)
    g = g * k[:, None] * slope
    tl.store(G + rows[:, None] * stride_g + cols[None, :], g.to(G.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _flags(hidden, weight, bias, softcap):
    dot_fp32, precision = dot_precision(hidden, weight)
    return dict(HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, DOT_FP32=dot_fp32, PRECISION=precision)


def forward_lse(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                logit_scale: float, softcap: Optional[float], cfg: Config) -> tuple:
    """(lse, z_y), fp32 [N], from the fused forward kernel and the host merge of its splits."""
    n, d = hidden.shape
    v = weight.shape[0]
    n_splits = triton.cdiv(v, cfg.vocab_per_split)
    part = torch.empty(3, n_splits, n, dtype=torch.float32, device=hidden.device)
    if n:
        grid = (triton.cdiv(n, cfg.block_n) * n_splits,)
        _forward_kernel[grid](hidden, weight, weight if bias is None else bias, targets, part[0], part[1], part[2],
                              n, v, d, hidden.stride(0), weight.stride(0), float(logit_scale), float(softcap or 1.0),
                              cfg.vocab_per_split, n_splits, **_flags(hidden, weight, bias, softcap),
                              BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_D=cfg.block_d, GROUP_N=cfg.group_n,
                              num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    m_max = part[0].amax(0)
    lse = m_max + torch.log((part[1] * torch.exp(part[0] - m_max)).sum(0))
    return lse, part[2].sum(0)


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result (fp32 accumulation inside the GEMM for 16-bit inputs)."""
    if a.dtype == torch.float32:
        return a @ b
    try:
        return torch.mm(a, b, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):  # torch < 2.8, or a backend without it
        return (a @ b).float()


class WeightedCETriton(torch.autograd.Function):
    """loss = sum_t k_t nll_t for tokens whose targets are all valid (the wrapper drops ignored ones)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, coef, logit_scale, softcap, config=None):
        hidden, weight = hidden.contiguous(), weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        cfg = config or default_config(hidden, weight)
        lse, zy = forward_lse(hidden, weight, bias, targets, logit_scale, softcap, cfg)
        ctx.save_for_backward(hidden, weight, bias, targets, coef, lse)
        ctx.args = (logit_scale, softcap, cfg)
        return (coef.double() * (lse - zy).double()).sum().float()

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, coef, lse = ctx.saved_tensors
        logit_scale, softcap, cfg = ctx.args
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, d = hidden.shape
        v = weight.shape[0]
        g_dtype = hidden.dtype if hidden.dtype == weight.dtype else torch.float32
        elem = torch.empty((), dtype=g_dtype).element_size()
        chunk = max(cfg.block_n, cfg.chunk_bytes // (v * elem) // cfg.block_n * cfg.block_n)
        k = coef * grad_out.float()
        dh = torch.empty_like(hidden) if need_h else None
        dw = torch.zeros(v, d, dtype=torch.float32, device=hidden.device) if need_w else None
        db = torch.zeros(v, dtype=torch.float32, device=hidden.device) if need_b else None
        flags = _flags(hidden, weight, bias, softcap)
        buf = torch.empty(min(chunk, n), v, dtype=g_dtype, device=hidden.device)
        for t0 in range(0, n, chunk):
            t1 = min(n, t0 + chunk)
            g = buf[: t1 - t0]
            h = hidden[t0:t1]
            grid = (triton.cdiv(t1 - t0, cfg.block_n) * triton.cdiv(v, cfg.block_v),)
            _grad_logits_kernel[grid](h, weight, weight if bias is None else bias, targets[t0:t1], lse[t0:t1],
                                      k[t0:t1], g, t1 - t0, v, d, h.stride(0), weight.stride(0), g.stride(0),
                                      float(logit_scale), float(softcap or 1.0), **flags, BLOCK_N=cfg.block_n,
                                      BLOCK_V=cfg.block_v, BLOCK_D=cfg.block_d, GROUP_N=cfg.group_n,
                                      num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            if need_h:
                dh[t0:t1] = (g @ weight.to(g_dtype)).to(hidden.dtype)
            if need_w:
                dw += _mm_f32(g.T, h.to(g_dtype))
            if need_b:
                db += g.sum(0, dtype=torch.float32)
        return (dh, None if dw is None else dw.to(weight.dtype), None if db is None else db.to(bias.dtype),
                None, None, None, None, None)
