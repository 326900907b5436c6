"""Triton helpers shared by the kernels of every op: launch configuration, dot-product precision,
grouped program order, the logits transform and one logits tile.

Logits are z = softcap(logit_scale * (W h + b)) with softcap(x) = c tanh(x / c) when a cap c is given
(docs/method.md §2.1). tanh is computed as tanh(|x|) = -u / (2 + u) with u = expm1(-2|x|), which keeps
full relative precision near 0 where 2 sigmoid(2x) - 1 cancels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .backend import INTERPRET

# torch.get_float32_matmul_precision() -> tl.dot input_precision for fp32 operands
_PRECISION = {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}


@dataclass(frozen=True)
class LaunchConfig:
    """Block sizes and launch options. Rounding may depend on them, never on N or on a token's
    position in the batch, so one config gives batch-invariant results."""

    block_n: int
    block_v: int
    block_d: int
    group_n: int = 8  # token blocks sharing the L2 while they stream the same weight tiles
    num_warps: int = 8
    num_stages: int = 3


def interpreter_blocks(hidden: torch.Tensor, weight: torch.Tensor) -> dict:
    """Block sizes for the interpreter, where numpy runs whole blocks: few, large programs (tiles of up
    to 2^20 elements, blocks sized by d and V)."""
    d, v = hidden.shape[1], weight.shape[0]
    return dict(block_n=256, block_v=min(4096, max(64, triton.next_power_of_2(v))),
                block_d=min(128, max(16, triton.next_power_of_2(d))), num_warps=1, num_stages=1)


def dot_precision(hidden: torch.Tensor, weight: torch.Tensor) -> tuple:
    """(DOT_FP32, PRECISION): whether tl.dot takes fp32 operands (mixed dtypes, fp32 inputs, and always in
    the interpreter, whose tl.dot mishandles 16-bit operands; products of bf16 values are exact in fp32,
    as on tensor cores), and then the input precision that torch.get_float32_matmul_precision() asks for."""
    dot_fp32 = INTERPRET or hidden.dtype != weight.dtype or hidden.dtype == torch.float32
    return dot_fp32, (_PRECISION[torch.get_float32_matmul_precision()] if dot_fp32 else None)


@triton.jit
def grouped_ids(pid, N, n_cols, BLOCK_N: tl.constexpr, GROUP_N: tl.constexpr):
    # (token block, column block) of a program: GROUP_N consecutive token blocks walk the column blocks
    # together, so the hidden blocks and the weight tiles they stream stay in L2.
    n_blocks = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_N * n_cols
    first = (pid // in_group) * GROUP_N
    group_size = tl.minimum(n_blocks - first, GROUP_N)
    return first + (pid % in_group) % group_size, (pid % in_group) // group_size


@triton.jit
def expm1(x):
    # e^x - 1 without cancellation: Taylor series to x^8 for |x| < 0.5 (truncation < 1e-8 relative).
    small = tl.abs(x) < 0.5
    t = tl.where(small, x, 0.0)
    p = 1.0 / 40320.0
    p = p * t + 1.0 / 5040.0
    p = p * t + 1.0 / 720.0
    p = p * t + 1.0 / 120.0
    p = p * t + 1.0 / 24.0
    p = p * t + 1.0 / 6.0
    p = p * t + 0.5
    p = p * t + 1.0
    return tl.where(small, p * t, tl.exp(x) - 1.0)


@triton.jit
def log1p(x):
    # log(1 + x) for x >= 0: 2 atanh(t), t = x / (2 + x), as an odd series for x < 0.5 (t < 0.2).
    small = x < 0.5
    t = tl.where(small, x, 0.0) / (2.0 + tl.where(small, x, 0.0))
    t2 = t * t
    p = 2.0 / 11.0
    p = p * t2 + 2.0 / 9.0
    p = p * t2 + 2.0 / 7.0
    p = p * t2 + 2.0 / 5.0
    p = p * t2 + 2.0 / 3.0
    p = p * t2 + 2.0
    return tl.where(small, p * t, tl.log(1.0 + x))


@triton.jit
def transform_logits(acc, bias, logit_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    # (z, t): z = softcap(logit_scale * (acc + bias)) and t = z / softcap = tanh(.) (0 without a cap), the
    # soft-cap's derivative being 1 - t^2.
    z = (acc + bias) * logit_scale
    t = tl.zeros_like(z)
    if HAS_SOFTCAP:
        u = expm1(-2.0 * tl.abs(z / softcap))
        th = -u / (2.0 + u)
        t = tl.where(z < 0, -th, th)
        z = softcap * t
    return z, t


@triton.jit
def logits_tile(H, W, Bias, rows, row_ok, cols, col_ok, D, stride_h, stride_w, logit_scale, softcap,
                HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    # (z, t) of transform_logits for the tile [rows, cols]: W h accumulated in fp32 over d chunks by tl.dot.
    dd = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = dd < D - d0
        h = tl.load(H + rows[:, None] * stride_h + (d0 + dd)[None, :], mask=row_ok[:, None] & d_ok[None, :],
                    other=0.0)
        w = tl.load(W + cols[None, :] * stride_w + (d0 + dd)[:, None], mask=d_ok[:, None] & col_ok[None, :],
                    other=0.0)
        if DOT_FP32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return transform_logits(acc, bias, logit_scale, softcap, HAS_SOFTCAP)
