"""The fused Triton LM-head statistics kernel against a float64 oracle written here.

On CPU the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 on a CUDA machine the same tests run compiled, plus the large-shape ones.
"""
import math
import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

from lark_fast import ops
from lark_fast.kernels.backend import INTERPRET as TRITON_INTERPRET
from lark_fast.kernels.lm_head_stats import (CPU_AVAILABLE, RANK_TIE, lm_head_stats_cpu, lm_head_stats_naive,
                                             lm_head_stats_torch, lm_head_stats_triton)

if lm_head_stats_triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)
DEV = "cuda" if torch.cuda.is_available() and not TRITON_INTERPRET else "cpu"
if DEV == "cpu" and not TRITON_INTERPRET:
    pytest.skip("compiled Triton kernels need CUDA; set TRITON_INTERPRET=1 for the interpreter",
                allow_module_level=True)

from lark_fast.kernels.lm_head_stats.fused import Config  # noqa: E402
from lark_fast.kernels.triton_utils import expm1, log1p, transform_logits  # noqa: E402

NAMES = ("lse", "nll", "brier", "entropy", "rank", "brier_topk", "entropy_topk")
# many small splits (6 of them) and groups of 2 token blocks: exercises the merge and the grouped order
SPLIT6 = Config(block_n=16, block_v=64, block_d=32, group_n=2, vocab_per_split=192, num_warps=4, num_stages=1,
                merge_block=16)


def reference64(h, W, y, *, bias=None, scale=1.0, cap=None, K=0):
    """docs/method.md §2 in float64 from the very same input values (on their device; results on the CPU); rank as
    a band [lo, hi] that brackets the tie margin with the fp32 rounding of the dot products (16 units of
    roundoff of sum |h_i w_i|)."""
    h, W = h.double(), W.double()
    z = h @ W.T + (0 if bias is None else bias.double())
    z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    rows = torch.arange(len(y), device=y.device)
    yy = y.clamp(min=0)
    logp = torch.log_softmax(z, 1)
    p = logp.exp()
    zy, p_y = z[rows, yy], p[rows, yy]
    margin = RANK_TIE * zy.abs().clamp(min=1)
    absdot = h.abs() @ W.abs().T
    eps = 2.0 ** -20 * (absdot + absdot[rows, yy][:, None]) * scale
    gap = z - zy[:, None] - margin[:, None]
    out = {"lse": torch.logsumexp(z, 1), "nll": -logp[rows, yy], "brier": (p * p).sum(1) - 2 * p_y + 1,
           "entropy": -(p * logp).sum(1), "rank_lo": 1 + (gap > eps).sum(1), "rank_hi": 1 + (gap > -eps).sum(1),
           "zmax": z.abs().amax(1)}
    out["rank_hi"] -= 1  # the target's own column, whose gap is -margin
    if K:
        top = z.topk(K, 1).values
        pk = torch.softmax(top, 1)
        lse_k = torch.logsumexp(top, 1)
        in_top = out["rank_lo"] <= K
        out["brier_topk"] = 1 - 2 * torch.exp(zy - lse_k) * in_top + (pk * pk).sum(1)
        out["entropy_topk"] = -(pk * torch.log_softmax(top, 1)).sum(1)
        out["topk_sure"] = (out["rank_hi"] <= K) | (out["rank_lo"] > K)
    return {name: x.cpu() for name, x in out.items()}


def check(s, ref, y, *, same=None, tol=2e-6, abs_tol=None):
    """|ours - gt| <= |torch same-dtype - gt| + tol (1 + max|z|); with abs_tol also |ours - gt| <= abs_tol;
    rank inside the oracle's band; invariants; ignored tokens hold 0."""
    keep = (y != -100).cpu()
    for name in ("lse", "nll", "brier", "entropy", "brier_topk", "entropy_topk"):
        ours = getattr(s, name)
        if ours is None:
            continue
        ok = keep & ref["topk_sure"] if name == "brier_topk" else keep
        err = (ours.double().cpu() - ref[name])[ok].abs()
        bound = tol * (1 + ref["zmax"][ok])
        if same is not None:
            bound = bound + (getattr(same, name).double().cpu() - ref[name])[ok].abs()
        assert bool((err <= bound).all()), f"{name}: max err {err.max():.3g} over bound"
        if abs_tol is not None:
            assert err.max() <= abs_tol, f"{name}: max err {err.max():.3g} > {abs_tol}"
        assert bool((ours.cpu()[~keep] == 0).all()), f"{name}: ignored tokens must hold 0"
    rank = s.rank.long().cpu()
    assert s.rank.dtype == torch.int32
    assert bool(((rank >= ref["rank_lo"]) & (rank <= ref["rank_hi"]))[keep].all()), "rank outside the oracle band"
    assert bool((rank[~keep] == 0).all())
    assert bool((s.nll[keep.to(s.nll.device)] >= 0).all())
    assert bool(((s.brier >= 0) & (s.brier <= 2)).all())


def make(N, d, V, dtype=torch.float32, seed=0, ignore_every=7):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g)
    W = torch.randn(V, d, generator=g) * (3 / math.sqrt(d))
    y = torch.randint(0, V, (N,), generator=g)
    y[::ignore_every] = -100
    return h.to(dtype).to(DEV), W.to(dtype).to(DEV), y.to(DEV)


@pytest.mark.parametrize("N,d,V,dtype", [(37, 72, 1003, torch.float32), (5, 576, 4099, torch.float32),
                                          (37, 72, 1003, torch.bfloat16), (19, 100, 515, torch.float16)])
def test_matches_float64_oracle(N, d, V, dtype):
    h, W, y = make(N, d, V, dtype)
    s = lm_head_stats_triton(h, W, y, topk=50)
    ref = reference64(h, W, y, K=50)
    same = lm_head_stats_naive(h, W, y, topk=50, dtype=dtype)  # torch computing in the input dtype
    # low-precision inputs: ours accumulates in fp32, so it must also be fp32-accurate in absolute terms
    check(s, ref, y, same=same, abs_tol=None if dtype == torch.float32 else 2e-4)
    keep = (y != -100).cpu()
    assert bool((s.entropy >= 0).all()) and bool((s.entropy <= math.log(V) + 1e-6).all())
    assert (ref["rank_lo"] == ref["rank_hi"])[keep].float().mean() > 0.9, "the rank band must pin most ranks"


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
    for cfg in (None, SPLIT6):
        s = lm_head_stats_triton(h.to(DEV), W.to(DEV), y.to(DEV), topk=8, config=cfg)
        assert torch.equal(s.rank.long().cpu(), 1 + (z > zy[:, None]).sum(1))
        top = z.topk(8, 1).values
        pk = torch.softmax(top, 1)
        in_top = (z > zy[:, None]).sum(1) < 8
        want = 1 - 2 * torch.exp(zy - torch.logsumexp(top, 1)) * in_top + (pk * pk).sum(1)
        assert torch.allclose(s.brier_topk.double().cpu(), want, atol=1e-5)


@pytest.mark.parametrize("bias,scale,cap", [(True, 1.0, None), (False, 0.37, None), (True, 2.5, 3.0), (False, 1.0, 0.5)])
def test_bias_scale_softcap(bias, scale, cap):
    h, W, y = make(29, 40, 777, seed=2)
    b = torch.randn(777, generator=torch.Generator().manual_seed(3)).to(DEV) if bias else None
    kw = dict(bias=b, logit_scale=scale, softcap=cap, topk=13)
    s = lm_head_stats_triton(h, W, y, **kw)
    ref = reference64(h, W, y, bias=b, scale=scale, cap=cap, K=13)
    check(s, ref, y, same=lm_head_stats_naive(h, W, y, **kw))


def test_split_merge_matches_single_split():
    h, W, y = make(45, 72, 1003, seed=4)
    many = lm_head_stats_triton(h, W, y, topk=33, config=SPLIT6)  # 6 splits of 192 columns
    one = lm_head_stats_triton(h, W, y, topk=33)
    check(many, reference64(h, W, y, K=33), y)
    for name in NAMES:
        a, b = getattr(many, name), getattr(one, name)
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-5), name


def test_confident_tokens_keep_relative_precision():
    # p_y -> 1: nll ~ 2e-7 and 1 - p_y ~ 2e-7 come from log1p / expm1, not from lse - z_y
    W = torch.zeros(3, 16)
    W[0, 0] = 1.0
    h = torch.zeros(4, 16)
    h[:, 0] = torch.tensor([16.5, 12.0, 30.0, 0.5])
    s = lm_head_stats_triton(h.to(DEV), W.to(DEV), torch.zeros(4, dtype=torch.long, device=DEV))
    for i, x in enumerate([16.5, 12.0, 30.0, 0.5]):
        r = 2 * math.exp(-x)
        one_minus_p = r / (1 + r)
        assert s.nll[i].item() == pytest.approx(math.log1p(r), rel=1e-5, abs=0)
        assert s.brier[i].item() == pytest.approx(one_minus_p ** 2 + 2 * (one_minus_p / 2) ** 2, rel=1e-4, abs=0)


@triton.jit
def _helpers_kernel(X, Expm1, Log1p, Tanh, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(X + i, mask=i < n, other=0.0)
    tl.store(Expm1 + i, expm1(x), mask=i < n)
    tl.store(Log1p + i, log1p(tl.abs(x)), mask=i < n)
    tl.store(Tanh + i, transform_logits(x, 0.0, 1.0, 1.0, True)[0], mask=i < n)  # softcap 1: tanh


def test_expm1_log1p_tanh_to_a_few_ulp():
    mag = torch.logspace(-9, 1.8, 200, dtype=torch.float64)
    x64 = torch.cat([mag, -mag, torch.zeros(1, dtype=torch.float64)])
    x = x64.float().to(DEV)
    out = [torch.empty_like(x) for _ in range(3)]
    _helpers_kernel[(1,)](x, *out, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    x64 = x.double().cpu()  # the exact fp32 inputs
    for got, want in zip(out, (torch.expm1(x64), torch.log1p(x64.abs()), torch.tanh(x64))):
        rel = ((got.double().cpu() - want).abs() / want.abs().clamp(min=1e-300))[x64 != 0]
        # fp32 roundoff, plus exp's argument rounding (|x| ulps) once exp itself is used (|x| >= 0.5)
        assert bool((rel <= 5e-7 * (1 + x64.abs()[x64 != 0])).all()), f"max rel err {rel.max():.3g}"
        assert bool((got.cpu()[x64 == 0] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_duplicate_of_the_target_row_never_outranks_it(dtype):
    # W[dup] == W[y]: equal logits up to the accumulation's rounding, a tie that favours y
    g = torch.Generator().manual_seed(11)
    N, d, V = 24, 576, 3001
    h = torch.randn(N, d, generator=g).to(dtype)
    W = (torch.randn(V, d, generator=g) * (3 / math.sqrt(d))).to(dtype)
    y = (h.double() @ W.double().T).argsort(1, descending=True)[:, 3]  # each row's 4th largest logit
    dup = torch.tensor([v for v in range(V - 1, -1, -1) if v not in set(y.tolist())][:N])
    W[dup] = W[y]
    z = h.double() @ W.double().T
    z[:, dup] = z[:, y]  # equal rows, equal logits (float64 BLAS need not round equal columns alike)
    zy = z[torch.arange(N), y]
    others = (z - zy[:, None]).abs()
    others[torch.arange(N), y] = others[torch.arange(N), dup] = math.inf
    clear = others.amin(1) > 1e-3 * (1 + zy.abs())  # no other logit near z_y: the rank is unambiguous
    assert clear.sum() >= N // 2
    s = lm_head_stats_triton(h.to(DEV), W.to(DEV), y.to(DEV))
    assert torch.equal(s.rank.long().cpu()[clear], (1 + (z > zy[:, None]).sum(1))[clear])


def test_rank_tie_margin():
    # z_v within RANK_TIE * max(1, |z_y|) above z_y ties with y (fp32 rounding); beyond it, it outranks y
    W = torch.zeros(6, 16)
    W[:, 0] = torch.tensor([1.0, 1.0 + 2.0 ** -22, 1.0 + 2.0 ** -18, 1.0, 0.5, 1.0 + 2.0 ** -21])
    h = torch.zeros(2, 16)
    h[:, 0] = torch.tensor([1.0, 64.0])
    s = lm_head_stats_triton(h.to(DEV), W.to(DEV), torch.zeros(2, dtype=torch.long, device=DEV))
    assert s.rank.tolist() == [2, 2]  # only token 2 is above z_y + margin, for |z_y| = 1 and 64


def test_deterministic_and_batch_invariant():
    h, W, y = make(70, 40, 700, seed=5)
    a = lm_head_stats_triton(h, W, y, topk=20)
    b = lm_head_stats_triton(h, W, y, topk=20)
    # other rows and, compiled, other block positions. The interpreter's tl.dot is numpy's matmul, whose
    # BLAS rounds a row by its place in the block (edge kernels): there the rows keep their positions.
    lo, hi = (0, 30) if TRITON_INTERPRET else (9, 30)
    part = lm_head_stats_triton(h[lo:hi], W, y[lo:hi], topk=20)
    for name in NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(getattr(a, name)[lo:hi], getattr(part, name)), name


def test_segment_sums_through_ops():
    h, W, y = make(40, 24, 333, seed=6)
    cu = torch.tensor([0, 7, 7, 20, 40], dtype=torch.int32, device=DEV)
    s = ops.lm_head_stats(h, W, y, cu_seqlens=cu, topk=5, backend="triton")
    ref = reference64(h, W, y, K=5)
    keep = (y != -100).cpu()
    for i in range(4):
        sl = slice(int(cu[i]), int(cu[i + 1]))
        assert s.segments.n_tokens[i].item() == int(keep[sl].sum())
        for name in ("nll", "brier", "entropy"):
            want = ref[name][sl][keep[sl]].sum().item()
            assert getattr(s.segments, name)[i].item() == pytest.approx(want, abs=1e-5)
            assert getattr(s.segments, name)[i].item() == pytest.approx(getattr(s, name)[sl].double().sum().item(),
                                                                          rel=1e-12, abs=1e-12)
        assert s.segments.rank_clipped[i].item() == s.rank[sl].clamp(max=100).sum().item()
    assert s.segments.n_tokens[1].item() == 0 and s.segments.nll[1].item() == 0.0


def test_agrees_with_torch_path_and_dispatch():
    h, W, y = make(33, 64, 1000, seed=7)
    auto = ops.lm_head_stats(h, W, y, topk=50, backend="auto")
    fused = lm_head_stats_triton(h, W, y, topk=50)
    chunked = ops.lm_head_stats(h, W, y, topk=50, backend="torch")
    direct = lm_head_stats_torch(h, W, y, topk=50)
    for name in NAMES:
        assert torch.equal(getattr(auto, name), getattr(fused, name)), f"auto must run the kernel: {name}"
        assert torch.equal(getattr(chunked, name), getattr(direct, name)), f"backend='torch': {name}"
        a, b = getattr(fused, name).double(), getattr(chunked, name).double()
        if name == "rank":
            assert (a != b).float().mean() < 0.05 and (a - b).abs().max() <= 2
        else:
            assert torch.allclose(a, b, rtol=1e-5, atol=2e-5), name
    with pytest.raises(ValueError, match="backend"):
        ops.lm_head_stats(h, W, y, backend="cuda")


def test_environment_chooses_the_backend_when_none_is_given(monkeypatch):
    h, W, y = make(9, 24, 300, seed=8)
    for env, impl in (("torch", lm_head_stats_torch), ("triton", lm_head_stats_triton)):
        monkeypatch.setenv("LARK_FAST_BACKEND", env)
        got, want = ops.lm_head_stats(h, W, y), impl(h, W, y)
        assert all(torch.equal(getattr(got, n), getattr(want, n)) for n in ("lse", "nll", "brier", "rank")), env
    monkeypatch.setenv("LARK_FAST_BACKEND", "gpu")
    with pytest.raises(ValueError, match="backend"):
        ops.lm_head_stats(h, W, y)


def test_unavailable_triton_backend_is_an_error(monkeypatch):
    from lark_fast.kernels import backend
    monkeypatch.setattr(backend, "HAVE_TRITON", False)
    h, W, y = make(3, 8, 20)
    with pytest.raises(ValueError, match="backend='triton'.*triton is not installed"):
        ops.lm_head_stats(h, W, y, backend="triton")
    auto = ops.lm_head_stats(h, W, y, backend="auto")
    fallback = lm_head_stats_cpu if CPU_AVAILABLE and DEV == "cpu" else lm_head_stats_torch  # the default without triton
    assert torch.equal(auto.nll, fallback(h, W, y).nll)  # auto falls back


AHEAD = f"""
import torch
from lark_fast.kernels.compile_ahead import compile_ahead
from lark_fast.kernels.lm_head_backward import fused as backward
from lark_fast.kernels.lm_head_stats import fused
from lark_fast.kernels.lm_head_stats.fused import Config
cases = [(torch.bfloat16, torch.bfloat16, dict()), (torch.bfloat16, torch.bfloat16, dict(topk=50, softcap=30.0)),
         (torch.float16, torch.float16, dict(bias=torch.zeros(1000), logit_scale=0.5)),
         (torch.float32, torch.float32, dict(topk=5)), (torch.float32, torch.bfloat16, dict(config={SPLIT6!r})),
         (torch.bfloat16, torch.bfloat16, dict(sketch_dim=16, sketch_key=1)),  # 1: an int Triton would specialise
         (torch.float32, torch.float32, dict(sketch_dim=256, sketch_key=3)),
         (torch.bfloat16, torch.bfloat16, dict(sketch_dim=64, sketch_key=3, softcap=30.0, topk=50))]
for dh, dw, kw in cases:
    h, w, y = torch.zeros(8, 576, dtype=dh), torch.zeros(1000, 576, dtype=dw), torch.zeros(8, dtype=torch.long)
    head = {{k: v for k, v in kw.items() if k in ("bias", "logit_scale", "softcap")}}
    launches = [(fused, lambda: fused.lm_head_stats_triton(h, w, y, **kw))]
    if "sketch_dim" not in kw:  # the activation backward, for the same head and dtypes
        launches.append((backward, lambda: backward.lm_head_backward_triton(h, w, y, torch.zeros(8), torch.ones(8),
                                                                          **head)))
    for module, launch in launches:
        for k in compile_ahead(module, launch, arch=90):
            assert k.asm["cubin"], k.name
            print("compiled", k.name, k.metadata.shared)
"""


def test_kernels_compile_for_hopper_without_a_gpu():
    # the interpreter accepts Python that the compiler rejects (e.g. a loop-carried value changing shape):
    # compile every variant for sm_90 here, without launching anything
    pytest.importorskip("triton.backends.nvidia")
    from triton._C import libtriton
    if not hasattr(libtriton, "native_specialize_impl"):  # compile_ahead specialises arguments with it
        pytest.skip("this triton predates native_specialize_impl")
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", AHEAD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("compiled _partial_kernel") == 8 and out.stdout.count("compiled _merge_kernel") == 8
    assert out.stdout.count("compiled _backward_kernel") == 5


def test_strided_hidden_int32_targets_and_empty_batch():
    h, W, y = make(21, 50, 300, seed=8)
    wide = torch.zeros(21, 80, device=DEV)
    wide[:, 5:55] = h
    strided = lm_head_stats_triton(wide[:, 5:55], W, y)
    int32_targets = lm_head_stats_triton(h, W, y.int())
    dense = lm_head_stats_triton(h, W, y)
    for name in NAMES[:5]:
        assert torch.equal(getattr(strided, name), getattr(dense, name)), name
        assert torch.equal(getattr(int32_targets, name), getattr(dense, name)), name
    empty = lm_head_stats_triton(h[:0], W, y[:0], topk=4)
    assert empty.nll.shape == (0,) and empty.brier_topk.shape == (0,)


# --- compiled kernels only (the GPU check script runs these) -----------------------------------------

gpu = pytest.mark.skipif(DEV != "cuda", reason="compiled kernels on CUDA only")


@gpu
@pytest.mark.parametrize("N,d,V", [(512, 576, 49152), (256, 2048, 128256), (300, 1536, 151936)])
def test_gpu_bf16_real_shapes(N, d, V):
    h, W, y = make(N, d, V, torch.bfloat16, seed=9)
    s = lm_head_stats_triton(h, W, y, topk=50)
    ref = reference64(h, W, y, K=50)
    check(s, ref, y, same=lm_head_stats_naive(h, W, y, topk=50, dtype=torch.bfloat16), abs_tol=2e-4)
    again = lm_head_stats_triton(h, W, y, topk=50)
    part = lm_head_stats_triton(h[100:228], W, y[100:228], topk=50)
    for name in NAMES:
        assert torch.equal(getattr(s, name), getattr(again, name)), name
        assert torch.equal(getattr(s, name)[100:228], getattr(part, name)), name


@gpu
def test_gpu_fp32_ieee():
    h, W, y = make(200, 576, 20011, seed=10)
    s = lm_head_stats_triton(h, W, y, topk=50)
    check(s, reference64(h, W, y, K=50), y, same=lm_head_stats_naive(h, W, y, topk=50))


@gpu
def test_gpu_int64_offsets():
    # V * d > 2^31 elements: offsets computed in int32 would wrap
    V, d = (1 << 20) + 5, 2056
    W = torch.empty(V, d, dtype=torch.bfloat16, device=DEV).normal_(0, 0.05)
    h = torch.randn(24, d, device=DEV).bfloat16()
    y = torch.randint(0, V, (24,), device=DEV)
    y[:8] = V - 1 - torch.arange(8, device=DEV)  # targets in the rows past 2^31 elements
    s = lm_head_stats_triton(h, W, y, topk=10)
    t = lm_head_stats_torch(h, W, y, topk=10, vocab_block=65536)
    for name in ("lse", "nll", "brier", "entropy", "brier_topk", "entropy_topk"):
        assert torch.allclose(getattr(s, name), getattr(t, name), rtol=1e-4, atol=1e-4), name
    assert (s.rank - t.rank).abs().max() <= 2
