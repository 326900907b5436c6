"""Fused Triton path of the LM-head statistics: logits are produced tile by tile in registers and
folded into per-token statistics; no [N, V] buffer ever reaches global memory.

Grid: one program per (token block, vocabulary split). A split is a fixed range of
``vocab_per_split`` columns (8192 by default, independent of N), so every token's arithmetic
depends only on its own row and the vocabulary: results are batch-invariant and deterministic.

Program (token block r, split c), with z = softcap(logit_scale * (W h + b)), the same statistics
as ``torch_chunked.py``:
  prologue  z_y = <h, W[y]> through the same tl.dot and d-loop as the main tiles (the diagonal of a
            [BLOCK_N, BLOCK_N] product), so a weight row identical to W[y] lands within rounding of
            z_y (usually on it) and the tie margin below keeps it from outranking y.
  main loop, one flat loop over (vocabulary tile, d chunk) so the loads of the next tile are in
  flight while a finished tile [BLOCK_N, BLOCK_V] is folded in, against a running max m
  (initialised at z_y), with sums over the non-target tokens v != y:
      r  = sum e^{z_v - m}      r1 = sum e^{z_v - m} (z_v - m)      r2 = sum e^{2 (z_v - m)}
      gt = #{v : z_v > z_y + RANK_TIE max(1, |z_y|)}   (ties up to fp32 rounding favour y)
      top = the K largest z_v (only with topk; threshold insertion, no sort)
  A new max m' rescales by a = e^{m - m'}: r -> a r, r2 -> a^2 r2, r1 -> a (r1 + (m - m') r).
Merge (one program per token block) folds the splits in split order with the same rescaling, then
with d_y = z_y - m, e_y = e^{d_y}, s = e_y + r:
  lse = m + log s           nll = log1p(r / e_y) (= lse - z_y without cancellation as p_y -> 1)
  brier = expm1(-nll)^2 + r2 / s^2                    entropy = log s - (r1 + e_y d_y) / s
  rank = 1 + gt             brier_topk = 1 - 2 p~_y [rank <= K] + sum_topK p~^2, p~ = softmax(top)
                            entropy_topk = -sum_topK p~ log p~
No atomics anywhere; every reduction has a fixed order. The target's column is overwritten with the
prologue's z_y, so lse, nll and the rank use one and the same value of z_y.

Sketch (docs/method.md §4, ``sketch_dim=k``): each tile also folds u = sum_{v != y} e^{z_v - m} f'_v P[:, v]
into a [BLOCK_N, KS] accumulator by one more tl.dot, with the tile of Pᵀ generated in registers
from the counter-based hash (``rademacher_tile``; f'_v = 1 - (z_v / c)^2 with soft-cap c, else 1),
rescaled by a like r. The merge folds the splits' u the same way and writes
  sketch = logit_scale (u / s + expm1(-nll) f'_y P[:, y]) / sqrt(k) = P_out (f ⊙ (p - e_y)).
KS is k rounded up to a power of two >= 16 (tl.dot's smallest width); the extra rows are dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..backend import INTERPRET
from ..sketch.projection import rademacher_tile
from ..triton_utils import LaunchConfig, dot_precision, expm1, grouped_ids, interpreter_blocks, log1p, transform_logits
from .common import MAX_TOPK, RANK_TIE, LMHeadStats

VOCAB_PER_SPLIT = 8192


@dataclass(frozen=True)
class Config(LaunchConfig):
    """Launch configuration (``triton_utils.LaunchConfig``) with the vocabulary split and the merge's
    token block."""

    vocab_per_split: int = VOCAB_PER_SPLIT
    merge_block: int = 32


def default_config(hidden: torch.Tensor, weight: torch.Tensor, sketch_dim: int = 0) -> Config:
    if INTERPRET:  # one split
        return Config(**interpreter_blocks(hidden, weight), vocab_per_split=1 << 30, merge_block=256)
    # a sketch wider than 16 adds a [block_n, k] accumulator and a [block_v, k] projection tile: block_v = 64
    # keeps k <= 128 free of spills on sm_90 (ptxas -v)
    block_v = 64 if sketch_dim > 16 else 128
    if hidden.dtype == weight.dtype and hidden.dtype in (torch.bfloat16, torch.float16):
        return Config(block_n=128, block_v=block_v, block_d=64)
    return Config(block_n=64, block_v=block_v, block_d=32)  # fp32 operands: no spills on sm_90


@triton.jit
def _insert_topk(top, cand):
    # top [BLOCK_N, KPAD]: the K largest values seen so far, unsorted; slots >= K hold +inf and are
    # never replaced. Each round moves every row's largest candidate above its current K-th largest
    # (the min of top) into that minimum's slot, so rounds = the most insertions any row needs.
    idx = tl.arange(0, cand.shape[1])[None, :]
    slot = tl.arange(0, top.shape[1])[None, :]
    kth, out = tl.min(top, axis=1, return_indices=True)
    cand = tl.where(cand > kth[:, None], cand, float("-inf"))
    best, at = tl.max(cand, axis=1, return_indices=True)
    while tl.max(best, axis=0) > float("-inf"):
        top = tl.where((slot == out[:, None]) & (best > kth)[:, None], best[:, None], top)
        kth, out = tl.min(top, axis=1, return_indices=True)
        cand = tl.where((idx == at[:, None]) | (cand <= kth[:, None]), float("-inf"), cand)
        best, at = tl.max(cand, axis=1, return_indices=True)
    return top


# N, V and topk only bound loops and masks: not specialising on them saves recompiles per batch size;
# sketch_key is data (a key of 1 would otherwise become a constant).
@triton.jit(do_not_specialize=["N", "V", "n_splits", "topk", "sketch_key"])
def _partial_kernel(H, W, Bias, Y, Part, Gt, Zy, Top, Sk,
                    N, V, D, stride_h, stride_w, logit_scale, softcap, vocab_per_split, n_splits, rank_tie, topk,
                    sketch_key, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr,
                    PRECISION: tl.constexpr, KPAD: tl.constexpr, KS: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, GROUP_N: tl.constexpr):
    # grouped order: consecutive programs share GROUP_N token blocks and walk all splits
    pid_n, pid_s = grouped_ids(tl.program_id(0), N, n_splits, BLOCK_N, GROUP_N)
    pid_s = pid_s.to(tl.int64)

    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(Y + rows, mask=row_ok, other=0).to(tl.int64)  # int64: y * stride_w can pass 2^31
    y = tl.where((y < 0) | (y >= V), 0, y)  # ignore_index: compute with y = 0, the merge writes 0
    dd = tl.arange(0, BLOCK_D)
    h_ptr = H + rows[:, None] * stride_h + dd[None, :]

    # Prologue: z_y as the diagonal of h @ W[y]^T, accumulated like the main tiles.
    acc_y = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    wy_ptr = W + y[None, :] * stride_w + dd[:, None]
    for d0 in range(0, D, BLOCK_D):
        d_ok = dd < D - d0
        h = tl.load(h_ptr + d0, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(wy_ptr + d0, mask=d_ok[:, None], other=0.0)
        if DOT_FP32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc_y = tl.dot(h, w, acc_y, input_precision=PRECISION)
    eye = tl.arange(0, BLOCK_N)[:, None] == tl.arange(0, BLOCK_N)[None, :]
    zy = tl.sum(tl.where(eye, acc_y, 0.0), axis=1)
    by = 0.0
    if HAS_BIAS:
        by = tl.load(Bias + y).to(tl.float32)
    zy, _ = transform_logits(zy, by, logit_scale, softcap, HAS_SOFTCAP)
    above = zy + rank_tie * tl.maximum(tl.abs(zy), 1.0)  # z_v > above: strictly greater than z_y

    m = zy
    r = tl.zeros([BLOCK_N], dtype=tl.float32)
    r1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    r2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    gt = tl.zeros([BLOCK_N], dtype=tl.int32)
    if KPAD > 0:
        slot = tl.arange(0, KPAD)[None, :]
        top = tl.where(slot < topk, float("-inf"), float("inf")) + tl.zeros([BLOCK_N, KPAD], tl.float32)
    if KS > 0:
        sk_rows = tl.arange(0, KS)
        u = tl.zeros([BLOCK_N, KS], dtype=tl.float32)

    # One flat loop over (vocabulary tile, d chunk) pairs, so that the software pipeline keeps loading the
    # next tile while a finished tile's statistics are folded in.
    v_begin = pid_s * vocab_per_split
    v_end = tl.minimum(v_begin + vocab_per_split, V)
    vv = tl.arange(0, BLOCK_V)
    n_d = tl.cdiv(D, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for step in range(0, (tl.cdiv(v_end - v_begin, BLOCK_V) * n_d).to(tl.int32)):  # int32: cheap // and %
        kd = step % n_d
        cols = v_begin + (step // n_d) * BLOCK_V + vv
        col_ok = cols < v_end
        d_ok = dd < D - kd * BLOCK_D
        h = tl.load(h_ptr + kd * BLOCK_D, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(W + cols[None, :] * stride_w + (kd * BLOCK_D + dd)[:, None],
                    mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        if DOT_FP32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
        if kd == n_d - 1:
            b = 0.0
            if HAS_BIAS:
                b = tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            z, th = transform_logits(acc, b, logit_scale, softcap, HAS_SOFTCAP)
            acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
            is_y = cols[None, :] == y[:, None]
            z = tl.where(is_y, zy[:, None], z)
            z = tl.where(col_ok[None, :], z, float("-inf"))

            gt += tl.sum((z > above[:, None]).to(tl.int32), axis=1)
            m_new = tl.maximum(m, tl.max(z, axis=1))
            a = tl.exp(m - m_new)
            zc = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
            e = tl.where(col_ok[None, :] & ~is_y, tl.exp(zc), 0.0)
            r1 = a * (r1 + (m - m_new) * r) + tl.sum(e * zc, axis=1)
            r = a * r + tl.sum(e, axis=1)
            r2 = a * a * r2 + tl.sum(e * e, axis=1)
            if KS > 0:
                if HAS_SOFTCAP:
                    e = e * (1.0 - th * th)  # e is 0 in the masked columns
                u = u * a[:, None] + tl.dot(e, rademacher_tile(sketch_key, sk_rows, cols), input_precision=PRECISION)
            m = m_new
            if KPAD > 0:
                top = _insert_topk(top, z)

    out = pid_s * 4 * N + rows
    tl.store(Part + out, m, mask=row_ok)
    tl.store(Part + out + N, r, mask=row_ok)
    tl.store(Part + out + 2 * N, r1, mask=row_ok)
    tl.store(Part + out + 3 * N, r2, mask=row_ok)
    tl.store(Gt + pid_s * N + rows, gt, mask=row_ok)
    if pid_s == 0:
        tl.store(Zy + rows, zy, mask=row_ok)
    if KPAD > 0:
        kk = tl.arange(0, KPAD)
        tl.store(Top + (pid_s * N + rows)[:, None] * KPAD + kk[None, :], top, mask=row_ok[:, None])
    if KS > 0:
        tl.store(Sk + (pid_s * N + rows)[:, None] * KS + sk_rows[None, :], u, mask=row_ok[:, None])


@triton.jit(do_not_specialize=["N", "n_splits", "topk", "sketch_key"])
def _merge_kernel(Part, Gt, Zy, Top, Sk, Y, Lse, Nll, Brier, Entropy, Rank, BrierTopk, EntropyTopk, Sketch,
                  N, n_splits, log_v, ignore_index, topk, sketch_scale, softcap, sketch_key, sketch_dim,
                  HAS_SOFTCAP: tl.constexpr, KPAD: tl.constexpr, KS: tl.constexpr, S_PAD: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    sp = tl.arange(0, S_PAD).to(tl.int64)
    ok = row_ok[:, None] & (sp < n_splits)[None, :]
    at = sp[None, :] * 4 * N + rows[:, None]

    m_k = tl.load(Part + at, mask=ok, other=float("-inf"))
    m_k = tl.where(row_ok[:, None], m_k, 0.0)
    r_k = tl.load(Part + at + N, mask=ok, other=0.0)
    r1_k = tl.load(Part + at + 2 * N, mask=ok, other=0.0)
    r2_k = tl.load(Part + at + 3 * N, mask=ok, other=0.0)
    gt_k = tl.load(Gt + sp[None, :] * N + rows[:, None], mask=ok, other=0)

    m = tl.max(m_k, axis=1)
    a = tl.exp(m_k - m[:, None])  # 0 for padded splits
    r = tl.sum(a * r_k, axis=1)
    r1 = tl.sum(a * (r1_k + tl.where(ok, m_k - m[:, None], 0.0) * r_k), axis=1)
    r2 = tl.sum(a * a * r2_k, axis=1)
    rank = 1 + tl.sum(gt_k, axis=1)

    zy = tl.load(Zy + rows, mask=row_ok, other=0.0)
    d_y = zy - m  # <= 0
    e_y = tl.exp(d_y)
    s = e_y + r
    log_s = tl.log(s)
    nll = tl.where(d_y > -60.0, log1p(r / tl.where(d_y > -60.0, e_y, 1.0)), log_s - d_y)
    q = expm1(-nll)  # -(1 - p_y)
    brier = q * q + r2 / (s * s)
    entropy = tl.minimum(tl.maximum(log_s - (r1 + e_y * d_y) / s, 0.0), log_v)
    lse = m + log_s

    keep = tl.load(Y + rows, mask=row_ok, other=ignore_index) != ignore_index
    tl.store(Lse + rows, tl.where(keep, lse, 0.0), mask=row_ok)
    tl.store(Nll + rows, tl.where(keep, nll, 0.0), mask=row_ok)
    tl.store(Brier + rows, tl.where(keep, brier, 0.0), mask=row_ok)
    tl.store(Entropy + rows, tl.where(keep, entropy, 0.0), mask=row_ok)
    tl.store(Rank + rows, tl.where(keep, rank, 0), mask=row_ok)

    if KS > 0:
        sk_rows = tl.arange(0, KS)
        u = tl.zeros([BLOCK_N, KS], dtype=tl.float32)
        m_c = Part + rows  # split c's running max; pointers advance, so no c * 4 * N product overflows
        sk_c = Sk + rows[:, None] * KS + sk_rows[None, :]
        for c in range(0, n_splits):
            a_c = tl.exp(tl.load(m_c, mask=row_ok, other=0.0) - m)
            u += a_c[:, None] * tl.load(sk_c, mask=row_ok[:, None], other=0.0)
            m_c += 4 * N
            sk_c += N * KS
        f_y = 1.0
        if HAS_SOFTCAP:
            zs = zy / softcap
            f_y = 1.0 - zs * zs
        y_col = tl.load(Y + rows, mask=row_ok, other=0)
        p_y = rademacher_tile(sketch_key, sk_rows, tl.where(keep, y_col, 0))  # [BLOCK_N, KS]: P[:, y]
        sk = (u / s[:, None] + (q * f_y)[:, None] * p_y) * sketch_scale  # logit_scale / sqrt(k)
        tl.store(Sketch + rows[:, None] * sketch_dim + sk_rows[None, :], tl.where(keep[:, None], sk, 0.0),
                 mask=row_ok[:, None] & (sk_rows < sketch_dim)[None, :])

    if KPAD > 0:
        # split 0's top is already a valid running top-K; the other splits' values are inserted into it
        kk = tl.arange(0, KPAD)[None, :]
        top = tl.load(Top + rows[:, None] * KPAD + kk, mask=row_ok[:, None], other=0.0)
        for c in range(1, n_splits):
            at_c = (c * N + rows[:, None]) * KPAD + kk
            top = _insert_topk(top, tl.load(Top + at_c, mask=row_ok[:, None] & (kk < topk), other=float("-inf")))
        top = tl.where(kk < topk, top, float("-inf"))
        top = tl.where(row_ok[:, None], top, 0.0)
        top_max = tl.max(top, axis=1)
        lse_k = top_max + tl.log(tl.sum(tl.exp(top - top_max[:, None]), axis=1))
        p = tl.exp(top - lse_k[:, None])
        p_y = tl.where(rank <= topk, tl.exp(zy - lse_k), 0.0)
        brier_topk = 1.0 - 2.0 * p_y + tl.sum(p * p, axis=1)
        entropy_topk = -tl.sum(tl.where(kk < topk, p * (top - lse_k[:, None]), 0.0), axis=1)
        tl.store(BrierTopk + rows, tl.where(keep, brier_topk, 0.0), mask=row_ok)
        tl.store(EntropyTopk + rows, tl.where(keep, entropy_topk, 0.0), mask=row_ok)


def lm_head_stats_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                         softcap: Optional[float] = None, topk: int = 0, ignore_index: int = -100,
                         sketch_dim: int = 0, sketch_key: int = 0, config: Optional[Config] = None) -> LMHeadStats:
    """Launches the fused statistics. Inputs as ``lark_fast.ops.lm_head_stats`` (which validates
    values; this checks shapes and layout). fp32 operands follow
    ``torch.get_float32_matmul_precision()`` (``highest`` = IEEE fp32 products)."""
    n, d = hidden.shape
    v = weight.shape[0]
    assert weight.shape == (v, d) and targets.shape == (n,), "shapes: hidden [N, d], weight [V, d], targets [N]"
    assert bias is None or bias.shape == (v,), "bias: expected [V]"
    assert 0 <= topk <= MAX_TOPK, f"topk: at most {MAX_TOPK}"
    cfg = config or default_config(hidden, weight, sketch_dim)
    kpad = MAX_TOPK if topk else 0  # one top-K width for every K: one compiled variant
    assert cfg.vocab_per_split % cfg.block_v == 0, "config: vocab_per_split must be a multiple of block_v"
    hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    targets = targets.contiguous()

    dev = hidden.device
    n_splits = triton.cdiv(v, cfg.vocab_per_split)
    part = torch.empty(n_splits, 4, n, dtype=torch.float32, device=dev)
    gt = torch.empty(n_splits, n, dtype=torch.int32, device=dev)
    zy = torch.empty(n, dtype=torch.float32, device=dev)
    top = torch.empty(n_splits, n, kpad, dtype=torch.float32, device=dev) if topk else part
    lse, nll, brier, entropy = (torch.empty(n, dtype=torch.float32, device=dev) for _ in range(4))
    rank = torch.empty(n, dtype=torch.int32, device=dev)
    brier_topk, entropy_topk = ((torch.empty(n, dtype=torch.float32, device=dev) for _ in range(2)) if topk
                                else (None, None))
    ks = max(16, triton.next_power_of_2(sketch_dim)) if sketch_dim else 0
    sk_part = torch.empty(n_splits, n, ks, dtype=torch.float32, device=dev) if sketch_dim else part
    sketch = torch.empty(n, sketch_dim, dtype=torch.float32, device=dev) if sketch_dim else None
    result = LMHeadStats(lse=lse, nll=nll, brier=brier, entropy=entropy, rank=rank, brier_topk=brier_topk,
                         entropy_topk=entropy_topk, sketch=sketch)
    if n == 0:
        return result

    dot_fp32, precision = dot_precision(hidden, weight)
    n_blocks = triton.cdiv(n, cfg.block_n)
    _partial_kernel[(n_blocks * n_splits,)](
        hidden, weight, bias if bias is not None else zy, targets, part, gt, zy, top, sk_part,
        n, v, d, hidden.stride(0), weight.stride(0), float(logit_scale),
        float(softcap) if softcap is not None else 1.0, cfg.vocab_per_split, n_splits, RANK_TIE, topk, sketch_key,
        HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, DOT_FP32=dot_fp32,
        PRECISION=precision, KPAD=kpad, KS=ks, BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v,
        BLOCK_D=cfg.block_d, GROUP_N=cfg.group_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _merge_kernel[(triton.cdiv(n, cfg.merge_block),)](
        part, gt, zy, top, sk_part, targets, lse, nll, brier, entropy, rank,
        brier_topk if topk else lse, entropy_topk if topk else lse, sketch if sketch_dim else lse,
        n, n_splits, math.log(v), ignore_index, topk,
        float(logit_scale) / max(sketch_dim, 1) ** 0.5, float(softcap) if softcap is not None else 1.0, sketch_key,
        max(sketch_dim, 1),
        HAS_SOFTCAP=softcap is not None, KPAD=kpad, KS=ks, S_PAD=triton.next_power_of_2(n_splits),
        BLOCK_N=cfg.merge_block, num_warps=4, num_stages=1)
    return result
