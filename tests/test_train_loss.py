"""weighted_sft_loss (torch and Triton paths) against float64 autograd of a weighted loss written here."""
import math

import pytest
import torch
from helpers import LargestAllocation

from lark_fast.kernels.backend import INTERPRET
from lark_fast.kernels.head import TEMP_BUDGET
from lark_fast.kernels.weighted_ce import WeightedCETriton, weighted_ce_naive
from lark_fast.train import weighted_sft_loss

# Triton on CPU tensors runs in the interpreter (conftest sets TRITON_INTERPRET=1); compiled, it needs CUDA.
BACKENDS = ["torch"] + (["triton"] if WeightedCETriton is not None and INTERPRET else [])


def reference(h, W, y, w, normalizer, bias=None, scale=1.0, cap=None):
    """sum_t w_t (logsumexp(z_t) - z_{t,y_t}) / normalizer over tokens with y_t != -100, in float64."""
    z = h @ W.T
    if bias is not None:
        z = z + bias
    z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    total = z.new_zeros(())
    for t in range(len(y)):
        if int(y[t]) != -100:
            total = total + w[t] * (torch.logsumexp(z[t], 0) - z[t, y[t]])
    return total / normalizer


def make(N, d, V, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g)
    W = torch.randn(V, d, generator=g) / math.sqrt(d) * 3
    b = torch.randn(V, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    y[::7] = -100                    # ignored tokens
    w = torch.rand(N, generator=g) * 2
    w[1::5] = 0                      # zero weights
    return h.to(dtype), W.to(dtype), b.to(dtype), y, w


def grads(fn, *leaves):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    loss = fn(*leaves)
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


def assert_close(ours, gt, rtol, name):
    err = (ours.double() - gt).abs().max().item()
    scale = gt.abs().max().item()
    assert err <= rtol * max(scale, 1e-12), f"{name}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,d,V,bias,scale,cap", [
    (37, 72, 1003, True, 1.0, None),
    (37, 72, 1003, False, 0.37, 3.0),
    (5, 17, 4099, True, 2.5, None),
    (3, 3, 2, False, 1.0, 0.5),
    (64, 33, 129, True, 1.0, 30.0),
])
def test_gradients_match_float64_autograd(backend, N, d, V, bias, scale, cap):
    h, W, b, y, w = make(N, d, V, seed=N + V)
    norm = 3.7
    kw = dict(logit_scale=scale, softcap=cap)
    if bias:
        loss, (gh, gW, gb) = grads(lambda h, W, b: weighted_sft_loss(h, W, y, w, norm, bias=b, backend=backend, **kw),
                                   h, W, b)
        ref, (rh, rW, rb) = grads(lambda h, W, b: reference(h, W, y, w.double(), norm, b, scale, cap),
                                  h.double(), W.double(), b.double())
        assert_close(gb, rb, 1e-5, "d bias")
    else:
        loss, (gh, gW) = grads(lambda h, W: weighted_sft_loss(h, W, y, w, norm, backend=backend, **kw), h, W)
        ref, (rh, rW) = grads(lambda h, W: reference(h, W, y, w.double(), norm, None, scale, cap), h.double(), W.double())
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert_close(gh, rh, 1e-5, "d hidden")
    assert_close(gW, rW, 1e-5, "d weight")
    assert bool((gh[(y == -100) | (w == 0)] == 0).all()), "ignored and zero-weight tokens get no gradient"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_inputs_accumulate_in_fp32(backend):
    """max |ours - gt| <= max |naive bf16 - gt| + tol: no worse than the unfused bf16 loss (HF's default)."""
    h, W, b, y, w = make(48, 64, 777, seed=3, dtype=torch.bfloat16)
    loss, (gh, gW, gb) = grads(lambda h, W, b: weighted_sft_loss(h, W, y, w, 5.0, bias=b, backend=backend), h, W, b)
    naive, (nh, nW, nb) = grads(lambda h, W, b: weighted_ce_naive(h, W, y, w, 5.0, bias=b, dtype=torch.bfloat16),
                                h, W, b)
    ref, (rh, rW, rb) = grads(lambda h, W, b: reference(h, W, y, w.double(), 5.0, b), h.double(), W.double(), b.double())
    assert gh.dtype == gW.dtype == gb.dtype == torch.bfloat16
    assert abs(loss.item() - ref.item()) <= abs(naive.float().item() - ref.item()) + 1e-4 * abs(ref.item())
    for ours, nv, gt in ((gh, nh, rh), (gW, nW, rW), (gb, nb, rb)):
        tol = 2 ** -9 * gt.abs().max()  # half a bf16 rounding of the largest gradient
        assert (ours.double() - gt).abs().max() <= (nv.double() - gt).abs().max() + tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_trajectory_weights_broadcast_over_segments(backend):
    h, W, b, y, w = make(30, 16, 97, seed=5)
    cu = torch.tensor([0, 4, 4, 19, 30], dtype=torch.int32)  # includes an empty trajectory
    q = torch.tensor([0.5, 7.0, 0.0, 2.0])
    per_token = torch.cat([torch.full((int(cu[i + 1] - cu[i]),), float(q[i])) for i in range(4)])
    ours, (gh, gW) = grads(lambda h, W: weighted_sft_loss(h, W, y, w, 2.0, cu_seqlens=cu, traj_weights=q,
                                                          backend=backend), h, W)
    ref, (rh, rW) = grads(lambda h, W: reference(h, W, y, (w * per_token).double(), 2.0), h.double(), W.double())
    assert abs(ours.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert_close(gh, rh, 1e-5, "d hidden")
    assert_close(gW, rW, 1e-5, "d weight")
    # token_weights=None means 1 per token
    alone = weighted_sft_loss(h, W, y, None, 2.0, cu_seqlens=cu, traj_weights=q, backend=backend)
    assert abs(alone.item() - reference(h.double(), W.double(), y, per_token.double(), 2.0).item()) <= 1e-5 * 50


def test_triton_chunks_and_splits():
    """Several backward chunks and vocabulary splits give the same numbers as one."""
    if "triton" not in BACKENDS:
        pytest.skip("needs triton and TRITON_INTERPRET=1")
    from lark_fast.kernels.weighted_ce import fused
    h, W, b, y, w = make(70, 40, 1000, seed=9)
    small = fused.Config(block_n=16, block_v=64, block_d=16, num_warps=1, num_stages=1, vocab_per_split=320,
                         chunk_bytes=1000 * 4 * 32)  # 32-token chunks, 4 splits
    coef = (w / 3.0).masked_fill(y == -100, 0)
    keep = coef != 0

    def run(config):
        return grads(lambda h, W, b: WeightedCETriton.apply(h, W, b, y[keep], coef[keep], 1.0, None, config),
                     h[keep], W, b)
    (l1, g1), (l2, g2) = run(small), run(None)
    ref, (rh, rW, rb) = grads(lambda h, W, b: reference(h, W, y, w.double(), 3.0, b), h.double(), W.double(),
                              b.double())
    assert abs(l1.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert abs(l2.item() - ref.item()) <= 1e-5 * abs(ref.item())
    for a, bb, r in zip(g1, g2, (rh[keep], rW, rb)):
        assert_close(a, r, 1e-5, "chunked")
        assert_close(bb, r, 1e-5, "one chunk")


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    h, W, b, y, w = make(40, 24, 300, seed=11)
    runs = [grads(lambda h, W, b: weighted_sft_loss(h, W, y, w, 1.0, bias=b, backend=backend), h, W, b)
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b_ in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_to_learn_gives_zero_loss_and_gradients(backend):
    h, W, b, y, w = make(6, 8, 50, seed=2)
    loss, (gh, gW, gb) = grads(lambda h, W, b: weighted_sft_loss(h, W, torch.full_like(y, -100), w, 1.0, bias=b,
                                                                 backend=backend), h, W, b)
    assert loss.item() == 0 and not gh.any() and not gW.any() and not gb.any()


def test_grad_output_scales_gradients():
    h, W, b, y, w = make(20, 8, 64, seed=4)
    _, (g1, gw1) = grads(lambda h, W: weighted_sft_loss(h, W, y, w, 1.0), h, W)
    _, (g3, gw3) = grads(lambda h, W: -2.5 * weighted_sft_loss(h, W, y, w, 1.0), h, W)
    assert torch.allclose(g3, -2.5 * g1, rtol=1e-6, atol=0) and torch.allclose(gw3, -2.5 * gw1, rtol=1e-6, atol=0)


def test_no_tokens_by_vocab_allocation():
    N, d, V = 2048, 8, 65536
    h, W, b, y, w = make(N, d, V, seed=6)
    h.requires_grad_()
    W.requires_grad_()
    with LargestAllocation() as probe:
        weighted_sft_loss(h, W, y, w, 1.0, backend="torch").backward()
    assert probe.max_bytes <= TEMP_BUDGET * 4 <= N * V * 4 / 8, f"largest allocation {probe.max_bytes} B"
    with LargestAllocation() as probe:  # the probe does see the unfused loss's logits
        weighted_ce_naive(h, W, y, w, 1.0).backward()
    assert probe.max_bytes >= N * V * 4


@pytest.mark.parametrize("kwargs,arg", [
    (dict(normalizer=0.0), "normalizer"),
    (dict(normalizer=float("nan")), "normalizer"),
    (dict(normalizer=torch.ones(2)), "normalizer"),
    (dict(token_weights=torch.ones(3)), "token_weights"),
    (dict(token_weights=torch.full((10,), float("inf"))), "token_weights"),
    (dict(traj_weights=torch.ones(2)), "traj_weights"),
    (dict(traj_weights=torch.ones(3), cu_seqlens=torch.tensor([0, 5, 10], dtype=torch.int32)), "traj_weights"),
    (dict(cu_seqlens=torch.tensor([0, 5, 9], dtype=torch.int32)), "cu_seqlens"),
    (dict(targets=torch.full((10,), 40)), "targets"),
    (dict(hidden=torch.zeros(10, 7)), "weight"),
    (dict(softcap=-1.0), "softcap"),
    (dict(backend="cuda"), "backend"),
])
def test_errors_name_the_argument(kwargs, arg):
    args = dict(hidden=torch.zeros(10, 8), weight=torch.zeros(40, 8), targets=torch.zeros(10, dtype=torch.long),
                token_weights=None, normalizer=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=arg):
        weighted_sft_loss(args.pop("hidden"), args.pop("weight"), args.pop("targets"), args.pop("token_weights"),
                          args.pop("normalizer"), **args)


@pytest.mark.skipif(not torch.cuda.is_available() or WeightedCETriton is None or INTERPRET,
                    reason="compiled Triton needs CUDA (and TRITON_INTERPRET=0)")
def test_cuda_bf16_real_shape_and_determinism():
    """Qwen2.5-0.5B's head in bf16: no worse than the unfused bf16 loss against fp32, and bitwise repeatable."""
    h, W, b, y, w = make(2048, 896, 151936, seed=12, dtype=torch.bfloat16)
    h, W, y, w = h.cuda(), (W / 3).cuda(), y.cuda(), w.cuda()
    runs = [grads(lambda h, W: weighted_sft_loss(h, W, y, w, 100.0), h, W) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and all(torch.equal(a, c) for a, c in zip(runs[0][1], runs[1][1]))
    naive = grads(lambda h, W: weighted_ce_naive(h, W, y, w, 100.0, dtype=torch.bfloat16), h, W)
    ref = grads(lambda h, W: weighted_ce_naive(h, W, y, w, 100.0, dtype=torch.float32), h.float(), W.float())
    loss, ours = runs[0]
    assert abs(loss.item() - ref[0].item()) <= abs(naive[0].float().item() - ref[0].item()) + 1e-4 * ref[0].item()
    for o, n, r in zip(ours, naive[1], ref[1]):
        assert (o.float() - r).abs().max() <= (n.float() - r).abs().max() + 2 ** -9 * r.abs().max()
