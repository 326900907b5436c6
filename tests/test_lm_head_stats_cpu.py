"""The fused C++ LM-head statistics kernel (backend "cpu") against a float64 oracle written here, with the
bounds the torch and Triton backends are held to: |ours - exact| <= |torch in the same dtype - exact| +
tol (1 + max |z|). Also its vectorised exp and tanh, every instruction set (LARK_FAST_SIMD subprocesses),
thread-count and batch invariance, layouts and bad inputs."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lark_fast import _C, ops
from lark_fast.kernels.lm_head_stats import (CPU_AVAILABLE, RANK_TIE, lm_head_stats_cpu, lm_head_stats_naive,
                                             lm_head_stats_torch)
from lark_fast.kernels.lm_head_stats.cpu import simd
from lark_fast.kernels.sketch import rademacher

if not CPU_AVAILABLE:
    pytest.skip("lark_fast._C was built without the lm_head_stats kernel", allow_module_level=True)

NAMES = ("lse", "nll", "brier", "entropy", "rank", "brier_topk", "entropy_topk")
FLT_MIN = float(np.finfo(np.float32).tiny)


def reference64(h, W, y, *, bias=None, scale=1.0, cap=None, K=0, sketch_dim=0, sketch_key=0, ignore_index=-100):
    """docs/method.md §2 (and the sketch of §4) in float64 from the very same input values, with materialised
    logits. The rank is a band [lo, hi] that brackets the tie margin with the fp32 rounding of the dot
    products (16 units of roundoff of sum |h_i w_i|)."""
    h, W = h.double(), W.double()
    a = h @ W.T + (0 if bias is None else bias.double())
    z = a * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    rows = torch.arange(len(y))
    yy = torch.where(y == ignore_index, 0, y)
    logp = torch.log_softmax(z, 1)
    p = logp.exp()
    zy, p_y = z[rows, yy], p[rows, yy]
    margin = RANK_TIE * zy.abs().clamp(min=1)
    absdot = h.abs() @ W.abs().T
    eps = 2.0 ** -20 * (absdot + absdot[rows, yy][:, None]) * scale
    gap = z - zy[:, None] - margin[:, None]
    gap[rows, yy] = -math.inf  # the target's own column never counts
    out = {"lse": torch.logsumexp(z, 1), "nll": -logp[rows, yy], "brier": (p * p).sum(1) - 2 * p_y + 1,
           "entropy": -(p * logp).sum(1), "rank_lo": 1 + (gap > eps).sum(1), "rank_hi": 1 + (gap > -eps).sum(1),
           "zmax": z.abs().amax(1)}
    if K:  # softmax renormalised over the K largest logits; y is among them iff its rank <= K
        top = z.topk(K, 1).values
        pk = torch.softmax(top, 1)
        out["brier_topk"] = 1 - 2 * torch.exp(zy - torch.logsumexp(top, 1)) * (out["rank_lo"] <= K) + (pk * pk).sum(1)
        out["entropy_topk"] = -(pk * torch.log_softmax(top, 1)).sum(1)
        out["topk_sure"] = (out["rank_hi"] <= K) | (out["rank_lo"] > K)
    if sketch_dim:  # P (f ⊙ (p - e_y)), f = dz/da
        f = scale * (1 - (z / cap) ** 2) if cap is not None else torch.full_like(z, scale)
        g = f * (p - torch.nn.functional.one_hot(yy, z.shape[1]).double())
        signs = rademacher(sketch_key, torch.arange(sketch_dim), torch.arange(z.shape[1]), torch.float64)
        out["sketch"] = g @ signs.T / math.sqrt(sketch_dim)
    return out


def check(s, ref, y, *, same=None, tol=2e-6, abs_tol=None, ignore_index=-100):
    """|ours - exact| <= |torch same-dtype - exact| + tol (1 + max |z|); with abs_tol also |ours - exact| <=
    abs_tol; the rank inside the oracle's band; invariants; ignored tokens hold 0."""
    keep = y != ignore_index
    for name in ("lse", "nll", "brier", "entropy", "brier_topk", "entropy_topk"):
        ours = getattr(s, name)
        if name not in ref:
            assert ours is None, name
            continue
        assert ours.dtype == torch.float32 and ours.shape == y.shape, name
        ok = keep & ref["topk_sure"] if name == "brier_topk" else keep
        err = (ours.double() - ref[name])[ok].abs()
        bound = tol * (1 + ref["zmax"][ok])
        if same is not None:
            bound = bound + (getattr(same, name).double() - ref[name])[ok].abs()
        assert bool((err <= bound).all()), f"{name}: max err {err.max():.3g} over the bound"
        if abs_tol is not None:
            assert err.max() <= abs_tol, f"{name}: max err {err.max():.3g} > {abs_tol}"
        assert bool((ours[~keep] == 0).all()), f"{name}: ignored tokens must hold 0"
    assert s.rank.dtype == torch.int32
    rank = s.rank.long()
    assert bool(((rank >= ref["rank_lo"]) & (rank <= ref["rank_hi"]))[keep].all()), "rank outside the oracle band"
    assert bool((rank[~keep] == 0).all())
    assert bool((s.nll[keep] >= 0).all()) and bool(((s.brier >= 0) & (s.brier <= 2)).all())


def make(N, d, V, dtype=torch.float32, seed=0, ignore_every=7):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g)
    W = torch.randn(V, d, generator=g) * (3 / math.sqrt(d))
    y = torch.randint(0, V, (N,), generator=g)
    y[3::ignore_every] = -100
    return h.to(dtype), W.to(dtype), y


def cpu(h, W, y, **kw):
    return ops.lm_head_stats(h, W, y, backend="cpu", **kw)


# hidden sizes past one summation chunk (640), vocabularies past one tile (240), odd everything
@pytest.mark.parametrize("N,d,V,dtype", [(37, 72, 1003, torch.float32), (5, 576, 4099, torch.float32),
                                          (64, 17, 129, torch.float32), (1, 3, 2, torch.float32),
                                          (33, 1500, 700, torch.float32), (37, 72, 1003, torch.bfloat16),
                                          (5, 576, 4099, torch.bfloat16), (19, 100, 515, torch.float16)])
def test_matches_float64_oracle(N, d, V, dtype):
    h, W, y = make(N, d, V, dtype)
    K = min(50, V)
    s = cpu(h, W, y, topk=K)
    ref = reference64(h, W, y, K=K)
    same = lm_head_stats_naive(h, W, y, topk=K, dtype=dtype)  # torch computing in the input dtype
    # low-precision inputs are summed in fp32, so the results must also be fp32-accurate in absolute terms
    check(s, ref, y, same=same, abs_tol=None if dtype == torch.float32 else 2e-4)
    keep = y != -100
    assert bool((s.entropy >= 0).all()) and bool((s.entropy <= math.log(V) + 1e-6).all())
    assert (ref["rank_lo"] == ref["rank_hi"])[keep].float().mean() > 0.9, "the rank band must pin most ranks"


@pytest.mark.parametrize("bias,scale,cap", [(True, 1.0, None), (False, 0.37, None), (True, 2.5, 3.0),
                                            (False, 1.0, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_scale_softcap(bias, scale, cap, dtype):
    h, W, y = make(29, 40, 777, dtype, seed=2)
    b = torch.randn(777, generator=torch.Generator().manual_seed(3)).to(dtype) if bias else None
    kw = dict(bias=b, logit_scale=scale, softcap=cap, topk=13)
    s = cpu(h, W, y, **kw)
    ref = reference64(h, W, y, bias=b, scale=scale, cap=cap, K=13)
    check(s, ref, y, same=lm_head_stats_naive(h, W, y, dtype=dtype, **kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rank_exact_with_exact_ties(dtype):
    # small integers: every logit is exact in fp32, so many logits tie with z_y exactly; ties favour y
    g = torch.Generator().manual_seed(1)
    N, d, V = 40, 24, 300
    h = torch.randint(-2, 3, (N, d), generator=g).to(dtype)
    W = torch.randint(-1, 2, (V, d), generator=g).to(dtype)
    y = torch.randint(0, V, (N,), generator=g)
    z = h.double() @ W.double().T
    zy = z[torch.arange(N), y]
    assert int((z == zy[:, None]).sum()) > 2 * N, "the data must contain exact ties besides y itself"
    s = cpu(h, W, y, topk=8)
    assert torch.equal(s.rank.long(), 1 + (z > zy[:, None]).sum(1))
    top = z.topk(8, 1).values
    pk = torch.softmax(top, 1)
    in_top = (z > zy[:, None]).sum(1) < 8
    want = 1 - 2 * torch.exp(zy - torch.logsumexp(top, 1)) * in_top + (pk * pk).sum(1)
    assert torch.allclose(s.brier_topk.double(), want, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_duplicate_of_the_target_row_ties_with_it(dtype):
    # W[dup] == W[y]: z_y is summed like the GEMM's logits, so the duplicate's logit equals it bit for bit
    g = torch.Generator().manual_seed(11)
    N, d, V = 24, 1000, 3001  # two summation chunks
    h = torch.randn(N, d, generator=g).to(dtype)
    W = (torch.randn(V, d, generator=g) * (3 / math.sqrt(d))).to(dtype)
    z = h.double() @ W.double().T
    y = z.argsort(1, descending=True)[:, 3]  # each row's 4th largest logit
    dup = torch.tensor([v for v in range(V - 1, -1, -1) if v not in set(y.tolist())][:N])
    W[dup] = W[y]
    for scale, cap in ((1.0, None), (0.7, 20.0)):
        s = cpu(h, W, y, logit_scale=scale, softcap=cap)
        z = (h.double() @ W.double().T) * scale
        if cap is not None:
            z = cap * torch.tanh(z / cap)
        zy = z[torch.arange(N), y]
        others = (z - zy[:, None]).abs()
        others[torch.arange(N), y] = others[torch.arange(N), dup] = math.inf
        clear = others.amin(1) > 1e-3 * (1 + zy.abs())  # no other logit near z_y: the rank is unambiguous
        assert clear.sum() >= N // 2
        assert torch.equal(s.rank.long()[clear], (1 + (z > zy[:, None]).sum(1))[clear])


def test_rank_tie_margin():
    # z_v within RANK_TIE * max(1, |z_y|) above z_y ties with y (fp32 rounding); beyond it, it outranks y
    W = torch.zeros(6, 16)
    W[:, 0] = torch.tensor([1.0, 1.0 + 2.0 ** -22, 1.0 + 2.0 ** -18, 1.0, 0.5, 1.0 + 2.0 ** -21])
    h = torch.zeros(2, 16)
    h[:, 0] = torch.tensor([1.0, 64.0])
    s = cpu(h, W, torch.zeros(2, dtype=torch.long))
    assert s.rank.tolist() == [2, 2]  # only token 2 is above z_y + margin, for |z_y| = 1 and 64


def test_confident_tokens_keep_relative_precision():
    # p_y -> 1: nll ~ 2e-7 and 1 - p_y ~ 2e-7 come from log1p / expm1, not from lse - z_y
    W = torch.zeros(3, 16)
    W[0, 0] = 1.0
    h = torch.zeros(4, 16)
    h[:, 0] = torch.tensor([16.5, 12.0, 30.0, 0.5])
    s = cpu(h, W, torch.zeros(4, dtype=torch.long))
    for i, x in enumerate([16.5, 12.0, 30.0, 0.5]):
        r = 2 * math.exp(-x)
        one_minus_p = r / (1 + r)
        assert s.nll[i].item() == pytest.approx(math.log1p(r), rel=1e-5, abs=0)
        assert s.brier[i].item() == pytest.approx(one_minus_p ** 2 + 2 * (one_minus_p / 2) ** 2, rel=1e-4, abs=0)


@pytest.mark.parametrize("seed", range(3))
def test_extreme_logits_and_invariants(seed):
    # confident, peaked and flat rows: p_y -> 1, p_y -> 0 (logits ~ 1e4 apart), exact ties, a uniform row
    V, d = 211, 8
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g)
    W[5] = W[4]
    h = torch.randn(6, d, generator=g) * torch.tensor([[50.0], [50.0], [0.0], [1.0], [2000.0], [1.0]])
    y = torch.tensor([0, 1, 2, 4, 5, 5])
    s = cpu(h, W, y, topk=50)
    check(s, reference64(h, W, y, K=50), y, same=lm_head_stats_naive(h, W, y, topk=50), tol=1e-5)
    assert bool((s.entropy >= 0).all()) and bool((s.entropy <= math.log(V) + 1e-6).all())
    assert math.isclose(s.entropy[2].item(), math.log(V), rel_tol=1e-6)  # h = 0: uniform
    assert s.rank[2].item() == 1  # all logits exactly equal: ties favour y


@pytest.mark.parametrize("V,K", [(37, 37), (64, 64), (300, 64), (300, 1)])
def test_topk_edges(V, K):
    h, W, y = make(21, 30, V, seed=4)
    s = cpu(h, W, y, topk=K)
    check(s, reference64(h, W, y, K=K), y, same=lm_head_stats_naive(h, W, y, topk=K))
    if K == V:  # the renormalised softmax is the softmax: the top-K statistics are the full ones
        keep = y != -100
        assert torch.allclose(s.brier_topk[keep], s.brier[keep], atol=1e-5)
        assert torch.allclose(s.entropy_topk[keep], s.entropy[keep], atol=1e-5)


@pytest.mark.parametrize("k,scale,cap,dtype", [(1, 1.0, None, torch.float32), (16, 0.7, 2.0, torch.float32),
                                                (40, 1.0, None, torch.bfloat16), (256, 2.5, 30.0, torch.float32)])
def test_sketch_matches_oracle_and_torch_path(k, scale, cap, dtype):
    h, W, y = make(37, 72, 1003, dtype, seed=5)
    b = torch.randn(1003, generator=torch.Generator().manual_seed(6))
    kw = dict(bias=b, logit_scale=scale, softcap=cap, sketch_dim=k, sketch_key=0xDEADBEEF)
    s = cpu(h, W, y, topk=5, **kw)
    t = ops.lm_head_stats(h, W, y, backend="torch", topk=5, **kw)
    ref = reference64(h, W, y, bias=b, scale=scale, cap=cap, sketch_dim=k, sketch_key=0xDEADBEEF)
    keep = y != -100
    assert s.sketch.shape == (37, k) and s.sketch.dtype == torch.float32
    assert bool((s.sketch[~keep] == 0).all())
    err = (s.sketch.double() - ref["sketch"])[keep].abs()
    bound = (t.sketch.double() - ref["sketch"])[keep].abs() + 2e-6 * scale
    assert bool((err <= bound).all()), f"sketch: max err {err.max():.3g}"
    assert torch.allclose(s.sketch, t.sketch, rtol=1e-4, atol=1e-5)
    assert torch.equal(s.nll, cpu(h, W, y, topk=5, bias=b, logit_scale=scale, softcap=cap).nll)


def test_empty_batch_and_shapes():
    h, W, y = make(0, 16, 50)
    s = cpu(h, W, y, topk=4, sketch_dim=8)
    assert s.nll.shape == (0,) and s.rank.shape == (0,) and s.brier_topk.shape == (0,) and s.sketch.shape == (0, 8)
    s = cpu(*make(3, 16, 50)[:2], torch.tensor([1, 2, 3]))
    assert s.brier_topk is None and s.entropy_topk is None and s.sketch is None


def test_layouts_give_the_same_bits():
    h, W, y = make(21, 50, 300, seed=8)
    wide = torch.zeros(21, 80)
    wide[:, 5:55] = h
    w_wide = torch.zeros(300, 64)
    w_wide[:, 3:53] = W
    dense = cpu(h, W, y, topk=7)
    for args in ((wide[:, 5:55], W, y), (h, w_wide[:, 3:53], y), (h, W, y.int()), (h.T.contiguous().T, W, y),
                 (h, W.T.contiguous().T, y), (h, W, torch.stack([y, y], 1)[:, 0])):
        other = cpu(*args, topk=7)
        for name in NAMES:
            assert torch.equal(getattr(other, name), getattr(dense, name)), name


def test_thread_count_and_batch_invariance():
    h, W, y = make(150, 40, 1000, seed=9)  # several blocks of token groups for any instruction set
    kw = dict(topk=20, sketch_dim=12, sketch_key=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu(h, W, y, **kw)
        torch.set_num_threads(2)
        two = cpu(h, W, y, **kw)
    finally:
        torch.set_num_threads(threads)
    runs = [two] + [lm_head_stats_cpu(h, W, y, threads=t, **kw) for t in (1, 3, 4)]
    part = lm_head_stats_cpu(h[9:130], W, y[9:130], threads=2, **kw)  # other rows, other positions in the groups
    for name in NAMES + ("sketch",):
        for run in runs:
            assert torch.equal(getattr(run, name), getattr(one, name)), name
        assert torch.equal(getattr(part, name), getattr(one, name)[9:130]), name


def test_segment_sums_and_dispatch(monkeypatch):
    h, W, y = make(40, 24, 333, seed=10)
    cu = torch.tensor([0, 7, 7, 20, 40], dtype=torch.int32)
    s = cpu(h, W, y, cu_seqlens=cu, topk=5)
    for i in range(4):
        sl = slice(int(cu[i]), int(cu[i + 1]))
        assert s.segments.n_tokens[i].item() == int((y[sl] != -100).sum())
        assert s.segments.nll[i].item() == pytest.approx(s.nll[sl].double().sum().item(), rel=1e-12, abs=1e-12)
        assert s.segments.rank_clipped[i].item() == s.rank[sl].clamp(max=100).sum().item()
    # auto: the C++ kernel for CPU tensors where Triton does not run; torch stays forceable
    from lark_fast.kernels import backend
    from lark_fast.kernels.lm_head_stats import op
    monkeypatch.setattr(backend, "HAVE_TRITON", False)
    auto = ops.lm_head_stats(h, W, y, topk=5, backend="auto")
    forced = ops.lm_head_stats(h, W, y, topk=5, backend="torch")
    direct = lm_head_stats_cpu(h, W, y, topk=5)
    torch_path = lm_head_stats_torch(h, W, y, topk=5)
    for name in NAMES:
        assert torch.equal(getattr(auto, name), getattr(direct, name)), name
        assert torch.equal(getattr(forced, name), getattr(torch_path, name)), name
    monkeypatch.setattr(op, "AVAILABLE", ("auto", "torch", "triton"))  # an extension built without the kernel
    assert torch.equal(ops.lm_head_stats(h, W, y, backend="auto").nll, torch_path.nll)
    with pytest.raises(ValueError, match="backend='cpu': lm_head_stats has no such implementation"):
        ops.lm_head_stats(h, W, y, backend="cpu")


def test_nll_is_differentiable_with_the_cpu_backend():
    h, W, y = make(37, 48, 500, seed=12)
    b = torch.randn(500, generator=torch.Generator().manual_seed(13))
    g = torch.rand(37, generator=torch.Generator().manual_seed(14))
    grads = []
    for backend in ("cpu", "torch"):
        x = h.clone().requires_grad_()
        stats = ops.lm_head_stats(x, W, y, bias=b, logit_scale=0.7, softcap=2.0, backend=backend)
        (stats.nll * g).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5 * grads[1].abs().max().item())


@pytest.mark.parametrize("call,match", [
    (lambda h, W, y: lm_head_stats_cpu(h[None], W, y), "hidden: expected a floating tensor"),
    (lambda h, W, y: lm_head_stats_cpu(h.long(), W, y), "hidden: expected a floating tensor"),
    (lambda h, W, y: lm_head_stats_cpu(h, W.int(), y), "weight: expected a floating tensor"),
    (lambda h, W, y: lm_head_stats_cpu(h, W[:, :3], y), "weight: hidden size 3 does not match hidden's 4"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y.float()), "targets: expected an integer tensor"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y[:1]), "targets: expected a contiguous int64 array \\[2\\]"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, torch.tensor([0, 100])), "targets\\[1\\] = 100 is outside \\[0, 100\\)"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, torch.tensor([-100, -1])), "targets\\[1\\] = -1"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, bias=torch.zeros(99)), "bias: expected a contiguous float32"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, topk=65), "topk: expected an int in \\[0, 64\\]"),
    (lambda h, W, y: lm_head_stats_cpu(h, W[:10], y.clamp(max=9), topk=11), "topk: expected an int in \\[0, 10\\]"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, sketch_dim=257), "sketch_dim"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, sketch_key=2 ** 32), "sketch_key"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, softcap=0.0), "softcap"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, logit_scale=math.inf), "logit_scale"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, threads=-1), "threads"),
    (lambda h, W, y: lm_head_stats_cpu(h.to("meta"), W, y), "hidden: the cpu backend takes CPU tensors"),
    (lambda h, W, y: lm_head_stats_cpu(h, W, y, bias=torch.zeros(100, device="meta")), "bias: the cpu backend"),
])
def test_bad_input_is_named(call, match):
    h, W, y = torch.randn(2, 4), torch.randn(100, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=match):
        call(h, W, y)


# --- the vectorised exp and tanh, and every instruction set --------------------------------------------

def exp_tanh_inputs():
    """fp32 inputs over the whole range: magnitudes 1e-45 .. 3e38 of both signs, a dense grid over the
    range where e^x is a normal float (and a little beyond), the limits ln FLT_MIN / ln FLT_MAX and their
    neighbours, 0, -0, +-inf."""
    mag = np.logspace(-45, 38.5, 2000)
    grid = np.linspace(-110.0, 95.0, 400001)
    edges = []
    for x in (math.log(FLT_MIN), math.log(float(np.finfo(np.float32).max)), 0.5, -0.5):
        c = np.float32(x)
        edges += [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    special = [0.0, -0.0, np.inf, -np.inf, float(np.finfo(np.float32).max), -float(np.finfo(np.float32).max)]
    return np.concatenate([mag, -mag, grid, np.array(edges, dtype=np.float64), special]).astype(np.float32)


def check_exp(x, got):
    """e^x within 3 ulp (2^-22 relative) where it is a normal float; 0 where it is below FLT_MIN (then off by
    less than FLT_MIN); +inf where it overflows."""
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
    normal = (want >= FLT_MIN) & (want <= np.finfo(np.float32).max)
    rel = np.abs(got[normal].astype(np.float64) - want[normal]) / want[normal]
    assert rel.max() <= 2.0 ** -22, f"exp: max relative error {rel.max():.3g} at x = {x[normal][rel.argmax()]!r}"
    assert np.all(got[want < FLT_MIN] == 0)  # so off by less than FLT_MIN
    assert np.all(got[want > np.finfo(np.float32).max] == np.inf)
    assert got[x == 0].tolist() == [1.0, 1.0]


def check_tanh(x, got):
    """tanh x within 4 ulp (2^-21 relative, 2^-149 absolute for subnormal x), odd, +-1 at the ends."""
    want = np.tanh(x.astype(np.float64))
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= 2.0 ** -21 * np.abs(want) + 2.0 ** -149), f"tanh: max error {err.max():.3g}"
    assert np.array_equal(np.sign(got), np.sign(x)) and np.all(np.abs(got) <= 1)
    assert got[x == np.inf].tolist() == [1.0] and got[x == -np.inf].tolist() == [-1.0]


def test_exp_and_tanh_against_float64():
    x = exp_tanh_inputs()
    check_exp(x, _C.lm_head_exp(x))
    check_tanh(x, _C.lm_head_tanh(x))


LEVEL = r"""
import sys
import numpy as np
import torch
from lark_fast import _C
from lark_fast.kernels.lm_head_stats import lm_head_stats_cpu
from lark_fast.kernels.lm_head_stats.cpu import simd
data = np.load(sys.argv[1])
t = {k: torch.from_numpy(data[k]) for k in ("h", "W", "y", "b")}
s = lm_head_stats_cpu(t["h"], t["W"], t["y"], bias=t["b"], logit_scale=0.8, softcap=5.0, topk=50, sketch_dim=24,
                      sketch_key=17, threads=2)
bf = lm_head_stats_cpu(t["h"], t["W"].bfloat16(), t["y"], topk=10)
np.savez(sys.argv[2], simd=simd(), exp=_C.lm_head_exp(data["x"]), tanh=_C.lm_head_tanh(data["x"]),
         **{k: getattr(s, k).numpy() for k in ("lse", "nll", "brier", "entropy", "rank", "brier_topk", "entropy_topk",
                                                "sketch")},
         **{"bf16_" + k: getattr(bf, k).numpy() for k in ("lse", "nll", "brier", "entropy", "rank", "brier_topk",
                                                          "entropy_topk")})
"""


def test_every_instruction_set(tmp_path):
    # each level the CPU has (LARK_FAST_SIMD caps the choice; a CPU without AVX2 runs the baseline), held to
    # the oracle; exp and tanh of each level to float64
    h, W, y = make(45, 700, 1003, seed=15)
    b = torch.randn(1003, generator=torch.Generator().manual_seed(16))
    x = exp_tanh_inputs()
    np.savez(tmp_path / "in.npz", h=h.numpy(), W=W.numpy(), y=y.numpy(), b=b.numpy(), x=x)
    ref = reference64(h, W, y, bias=b, scale=0.8, cap=5.0, K=50, sketch_dim=24, sketch_key=17)
    ref_bf16 = reference64(h, W.bfloat16(), y, K=10)
    same = lm_head_stats_naive(h, W, y, bias=b, logit_scale=0.8, softcap=5.0, topk=50)
    same_bf16 = lm_head_stats_naive(h, W.bfloat16(), y, topk=10, dtype=torch.bfloat16)
    order = ["scalar", "generic", "avx2", "avx512"]
    best = order.index(simd())
    seen = []
    for level in reversed(order):
        env = dict(os.environ, LARK_FAST_SIMD=level, OMP_NUM_THREADS="2")
        out = tmp_path / f"{level}.npz"
        run = subprocess.run([sys.executable, "-c", LEVEL, str(tmp_path / "in.npz"), str(out)], env=env,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        r = np.load(out)
        used = str(r["simd"])
        assert used == order[min(order.index(level), best)], (level, used)
        seen.append(used)
        check_exp(x, r["exp"])
        check_tanh(x, r["tanh"])
        s = ops.LMHeadStats(**{k: torch.from_numpy(r[k]) for k in NAMES + ("sketch",)})
        check(s, ref, y, same=same)
        err = (s.sketch.double() - ref["sketch"])[y != -100].abs()
        assert err.max() <= 2e-6 * (1 + ref["zmax"].max()), f"{used} sketch: max err {err.max():.3g}"
        s_bf16 = ops.LMHeadStats(**{k: torch.from_numpy(r["bf16_" + k]) for k in NAMES})
        check(s_bf16, ref_bf16, y, same=same_bf16, abs_tol=2e-4)
    assert {"scalar", "generic"} <= set(seen)
