"""The LM head's activation backward and its output-gradient sketch, against float64 autograd of
nll = logsumexp(z) - z_y over the full logits (written here, independently of the op)."""
import pytest
import torch

from lark_fast import ops
from lark_fast.kernels.backend import INTERPRET
from lark_fast.kernels.lm_head_backward import (lm_head_backward_naive, lm_head_backward_torch,
                                                lm_head_backward_triton, output_grad_chunks)
from lark_fast.kernels.lm_head_stats import lm_head_stats_torch
from lark_fast.kernels.lm_head_stats.fused import Config, lm_head_stats_triton
from lark_fast.kernels.sketch import rademacher


def case(n=37, d=24, v=300, seed=0, ignore=(3, 20)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.5
    b = torch.randn(v, generator=g)
    y = torch.randint(0, v, (n,), generator=g)
    y[list(ignore)] = -100
    return h, w, b, y, torch.rand(n, generator=g)


def oracle(h, w, b, y, scale, cap):
    """float64 per-token nll as a function of h, and its logits' output gradient f ⊙ (p - e_y)."""
    hh = h.double().requires_grad_()
    a = hh @ w.double().T + b.double()
    a.retain_grad()
    z = a * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    kept = y != -100
    nll = (torch.logsumexp(z, 1) - z.gather(1, y.clamp(min=0)[:, None])[:, 0]) * kept
    return hh, a, nll


HEADS = [(1.0, None), (0.7, None), (0.7, 2.0)]


@pytest.mark.parametrize("scale,cap", HEADS)
def test_backward_matches_autograd(scale, cap):
    h, w, b, y, g = case()
    hh, _, nll = oracle(h, w, b, y, scale, cap)
    (nll * g.double()).sum().backward()
    want = hh.grad.float()
    kw = dict(bias=b, logit_scale=scale, softcap=cap)
    lse = lm_head_stats_torch(h, w, y, **kw).lse
    for got in (lm_head_backward_naive(h, w, y, g, **kw),
                lm_head_backward_torch(h, w, y, lse, g, vocab_block=64, token_block=8, **kw),
                lm_head_backward_triton(h, w, y, lse, g, **kw)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        assert got[[3, 20]].abs().max() == 0


def test_backward_is_batch_invariant_and_deterministic():
    h, w, b, y, g = case(n=40)
    lse = lm_head_stats_torch(h, w, y, bias=b).lse
    cfg = Config(block_n=16, block_v=64, block_d=16, num_warps=1, num_stages=1)
    # Compiled, any rows must give the same bits. The interpreter's tl.dot is numpy's matmul, whose BLAS
    # rounds a row by its place in the block (edge kernels): there the rows keep their block positions.
    lo, hi = (16, 32) if INTERPRET else (7, 30)
    full = lm_head_backward_triton(h, w, y, lse, g, bias=b, config=cfg)
    part = lm_head_backward_triton(h[lo:hi], w, y[lo:hi], lse[lo:hi], g[lo:hi], bias=b, config=cfg)
    assert torch.equal(full[lo:hi], part)
    assert torch.equal(full, lm_head_backward_triton(h, w, y, lse, g, bias=b, config=cfg))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nll_is_differentiable_through_the_op(backend):
    h, w, b, y, g = case()
    hh, _, nll = oracle(h, w, b, y, 0.7, 2.0)
    (nll * g.double()).sum().backward()
    x = h.clone().requires_grad_()
    stats = ops.lm_head_stats(x, w, y, bias=b, logit_scale=0.7, softcap=2.0, backend=backend,
                              cu_seqlens=torch.tensor([0, 10, 37], dtype=torch.int32))
    torch.testing.assert_close(stats.nll.double(), nll.detach(), rtol=1e-5, atol=1e-5)
    (stats.nll * g).sum().backward()
    torch.testing.assert_close(x.grad, hh.grad.float(), rtol=1e-5, atol=1e-5 * hh.grad.abs().max().item())
    assert not stats.brier.requires_grad and not stats.segments.nll.requires_grad
    with pytest.raises(ValueError, match="weight: requires grad"):
        ops.lm_head_stats(x, w.clone().requires_grad_(), y)
    with torch.no_grad():  # a trainable head is fine where nothing is differentiated
        ops.lm_head_stats(x, w.clone().requires_grad_(), y)


def test_output_grad_chunks_are_the_logit_gradient():
    h, w, b, y, g = case()
    _, a, nll = oracle(h, w, b, y, 0.7, 2.0)
    (nll * g.double()).sum().backward()
    lse = lm_head_stats_torch(h, w, y, bias=b, logit_scale=0.7, softcap=2.0).lse
    got = torch.zeros(a.shape)
    for t0, t1, v0, v1, d in output_grad_chunks(h, w, y, lse, g, bias=b, logit_scale=0.7, softcap=2.0,
                                                vocab_block=128, token_block=10):
        got[t0:t1, v0:v1] = d
    torch.testing.assert_close(got, a.grad.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale,cap", HEADS)
@pytest.mark.parametrize("k", [3, 16, 40])
def test_sketch_in_the_vocabulary_sweep(scale, cap, k):
    h, w, b, y, _ = case(v=333)
    _, a, nll = oracle(h, w, b, y, scale, cap)
    nll.sum().backward()
    key = 0xDEADBEEF
    p = rademacher(key, torch.arange(k), torch.arange(333)).double() / k ** 0.5
    want = (a.grad @ p.T).float()  # P_out (f ⊙ (p - e_y)), 0 on ignored rows
    kw = dict(bias=b, logit_scale=scale, softcap=cap, sketch_dim=k, sketch_key=key)
    got = [lm_head_stats_torch(h, w, y, vocab_block=100, token_block=16, **kw).sketch,
           lm_head_stats_triton(h, w, y, **kw).sketch,  # one split
           lm_head_stats_triton(h, w, y, config=Config(block_n=16, block_v=64, block_d=16, num_warps=1, num_stages=1,
                                                       vocab_per_split=128, merge_block=16), **kw).sketch]
    for s in got:
        torch.testing.assert_close(s, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    plain = lm_head_stats_torch(h, w, y, bias=b, logit_scale=scale, softcap=cap)
    assert torch.equal(plain.nll, lm_head_stats_torch(h, w, y, **kw).nll)  # the statistics do not change


def test_sketch_arguments_are_checked():
    h, w, b, y, _ = case()
    with pytest.raises(ValueError, match="sketch_dim"):
        ops.lm_head_stats(h, w, y, sketch_dim=-1)
    with pytest.raises(ValueError, match="sketch_dim"):
        ops.lm_head_stats(h, w, y, sketch_dim=10 ** 6)
    with pytest.raises(ValueError, match="sketch_key"):
        ops.lm_head_stats(h, w, y, sketch_dim=4, sketch_key=2 ** 32)
    assert ops.lm_head_stats(h, w, y).sketch is None
