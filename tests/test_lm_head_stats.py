"""The LM-head statistics op (torch path) against a float64 full-logits oracle written here."""
import math

import pytest
import torch
from helpers import LargestAllocation

from lark_fast import ops
from lark_fast.kernels.lm_head_stats import lm_head_stats_naive, lm_head_stats_torch


def oracle(h, W, y, bias=None, scale=1.0, cap=None, K=0, ignore_index=-100):
    """docs/method.md §2 in float64 with materialised logits and probabilities."""
    z = h.double() @ W.double().T
    if bias is not None:
        z = z + bias.double()
    z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    keep = y != ignore_index
    yy = torch.where(keep, y, 0)
    zy = z[torch.arange(len(y)), yy]
    lse = torch.logsumexp(z, 1)
    p = torch.exp(z - lse[:, None])
    onehot = torch.nn.functional.one_hot(yy, z.shape[1]).double()
    out = {
        "zmax": z.abs().amax(1),
        "lse": lse,
        "nll": lse - zy,
        "brier": ((p - onehot) ** 2).sum(1),
        "entropy": -(p * torch.log(p.clamp_min(1e-300))).sum(1),
        # rank bounds: ties within eps of z_y may go either way in fp32
        "rank_lo": 1 + (z > zy[:, None] + 1e-5 * (1 + zy.abs()[:, None])).sum(1),
        "rank_hi": 1 + (z > zy[:, None] - 1e-5 * (1 + zy.abs()[:, None])).sum(1) - 1,
    }
    if K:  # softmax renormalised over the K largest logits; y is among them iff its rank <= K
        vals = z.topk(K, 1).values
        lse_k = torch.logsumexp(vals, 1)
        pk = torch.exp(vals - lse_k[:, None])
        py = torch.exp(zy - lse_k) * ((1 + (z > zy[:, None]).sum(1)) <= K)
        out["brier_topk"] = 1 - 2 * py + (pk ** 2).sum(1)
        out["entropy_topk"] = -(pk * torch.log_softmax(vals, 1)).sum(1)
    return out, keep


def make(N, d, V, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g) * scale
    W = torch.randn(V, d, generator=g) / math.sqrt(d) * 3
    y = torch.randint(0, V, (N,), generator=g)
    return h.to(dtype), W.to(dtype), y


def check_against_oracle(s, ref, keep, tol, same_dtype):
    """|ours - gt| <= |torch same-dtype - gt| + tol (1 + max_v |z_v|): logit rounding scales with |z|."""
    for name in ("lse", "nll", "brier", "entropy", "brier_topk", "entropy_topk"):
        if name not in ref:
            continue
        ours = getattr(s, name).double()[keep]
        gt = ref[name][keep]
        bound = (getattr(same_dtype, name).double()[keep] - gt).abs() + tol * (1 + ref["zmax"][keep])
        err = (ours - gt).abs()
        assert bool((err <= bound).all()), f"{name}: max err {err.max():.3g}"
    r = s.rank.long()[keep]
    assert bool(((r >= ref["rank_lo"][keep]) & (r <= ref["rank_hi"][keep].clamp_min(ref["rank_lo"][keep]))).all())


@pytest.mark.parametrize("N,d,V", [(37, 72, 1003), (5, 576, 4099), (1, 3, 2), (64, 17, 129)])
def test_matches_float64_oracle(N, d, V):
    h, W, y = make(N, d, V)
    y[::7] = -100
    K = min(50, V)
    s = ops.lm_head_stats(h, W, y, topk=K, backend="torch")
    ref, keep = oracle(h, W, y, K=K)
    check_against_oracle(s, ref, keep, 1e-5, lm_head_stats_naive(h, W, y, topk=K))
    for name in ("lse", "nll", "brier", "entropy", "rank", "brier_topk", "entropy_topk"):
        assert bool((getattr(s, name)[~keep] == 0).all()), f"ignored tokens must hold 0 in {name}"


@pytest.mark.parametrize("bias,scale,cap", [(True, 1.0, None), (False, 0.37, None), (True, 2.5, 3.0), (False, 1.0, 0.5)])
def test_bias_scale_softcap(bias, scale, cap):
    h, W, y = make(29, 40, 777, seed=1)
    b = torch.randn(777) if bias else None
    kw = dict(bias=b, logit_scale=scale, softcap=cap, topk=13)
    s = ops.lm_head_stats(h, W, y, backend="torch", **kw)
    ref, keep = oracle(h, W, y, bias=b, scale=scale, cap=cap, K=13)
    check_against_oracle(s, ref, keep, 1e-5, lm_head_stats_naive(h, W, y, **kw))


@pytest.mark.parametrize("vocab_block,token_block", [(1, 1), (7, 3), (100, 1000), (5000, 2)])
def test_blocking_does_not_change_results(vocab_block, token_block):
    h, W, y = make(23, 16, 301, seed=2)
    a = lm_head_stats_torch(h, W, y, topk=10, vocab_block=vocab_block, token_block=token_block)
    ref, keep = oracle(h, W, y, K=10)
    check_against_oracle(a, ref, keep, 1e-5, lm_head_stats_naive(h, W, y, topk=10))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_bound(dtype):
    h, W, y = make(31, 48, 513, dtype=dtype, seed=3)
    s = ops.lm_head_stats(h, W, y, topk=20, backend="torch")
    ref, keep = oracle(h, W, y, K=20)  # ground truth from the very same low-precision values
    same = lm_head_stats_naive(h, W, y, topk=20, dtype=dtype)  # torch computing in the input dtype
    check_against_oracle(s, ref, keep, 1e-5, same)
    assert s.nll.dtype == torch.float32


@pytest.mark.parametrize("seed", range(4))
def test_extreme_logits_and_invariants(seed):
    # confident, peaked and flat rows: p_y -> 1 (nll ~ 1e-9), p_y -> 0, and exact ties
    V, d = 211, 8
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g)
    W[5] = W[4]  # two identical rows: exact ties between tokens 4 and 5
    h = torch.randn(6, d, generator=g) * torch.tensor([[50.0], [50.0], [0.0], [1.0], [200.0], [1.0]])
    y = torch.tensor([0, 1, 2, 4, 5, 5])
    s = ops.lm_head_stats(h, W, y, topk=50, backend="torch")
    ref, keep = oracle(h, W, y, K=50)
    check_against_oracle(s, ref, keep, 1e-5, lm_head_stats_naive(h, W, y, topk=50))
    assert bool((s.nll >= 0).all()) and bool((s.brier >= 0).all()) and bool((s.brier <= 2).all())
    assert bool((s.entropy >= 0).all()) and bool((s.entropy <= math.log(V) + 1e-6).all())
    assert math.isclose(s.entropy[2].item(), math.log(V), rel_tol=1e-6)  # h = 0: uniform
    assert s.rank[2].item() == 1  # all logits exactly equal: ties favour y


def test_brier_small_one_minus_p():
    # 1 - p_y ~ 1e-7: computed via expm1, not 1 - exp(-nll) (which would round to 0 in fp32)
    W = torch.zeros(3, 1)
    W[0, 0] = 1.0
    h = torch.tensor([[16.5]])
    s = ops.lm_head_stats(h, W, torch.tensor([0]), backend="torch")
    one_minus_p = 2 * math.exp(-16.5) / (1 + 2 * math.exp(-16.5))
    assert s.nll.item() == pytest.approx(math.log1p(2 * math.exp(-16.5)), rel=1e-5, abs=0)
    exact = one_minus_p ** 2 + 2 * (math.exp(-16.5) / (1 + 2 * math.exp(-16.5))) ** 2
    assert s.brier.item() == pytest.approx(exact, rel=1e-4, abs=0)  # ~3e-14: 1 - exp(-nll) would give 0


def test_segment_sums_and_counts():
    h, W, y = make(40, 24, 333, seed=4)
    y[[0, 5, 6, 39]] = -100
    cu = torch.tensor([0, 7, 7, 20, 40], dtype=torch.int32)
    s = ops.lm_head_stats(h, W, y, cu_seqlens=cu, topk=5, backend="torch")
    seg = s.segments
    for i in range(4):
        a, b = cu[i].item(), cu[i + 1].item()
        sl = slice(a, b)
        assert seg.n_tokens[i].item() == int((y[sl] != -100).sum())
        for name in ("nll", "brier", "entropy", "brier_topk", "entropy_topk"):
            assert getattr(seg, name)[i].item() == pytest.approx(getattr(s, name)[sl].double().sum().item(), abs=1e-9)
        assert seg.rank_clipped[i].item() == s.rank[sl].clamp(max=100).sum().item()
    assert seg.n_tokens[1].item() == 0 and seg.nll[1].item() == 0.0


def test_deterministic_bitwise():
    h, W, y = make(50, 33, 999, seed=5)
    a = ops.lm_head_stats(h, W, y, topk=50, backend="torch")
    b = ops.lm_head_stats(h, W, y, topk=50, backend="torch")
    for name in ("lse", "nll", "brier", "entropy", "rank", "brier_topk", "entropy_topk"):
        assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("kwargs,match", [
    (dict(targets=torch.tensor([0, 1000])), "targets\\[1\\] = 1000"),
    (dict(targets=torch.tensor([0.0, 1.0])), "targets"),
    (dict(weight=torch.randn(10, 5)), "weight: hidden size 5"),
    (dict(bias=torch.randn(9)), "bias"),
    (dict(topk=65), "topk"),
    (dict(softcap=0.0), "softcap"),
    (dict(logit_scale=-1.0), "logit_scale"),
    (dict(cu_seqlens=torch.tensor([0, 3])), "cu_seqlens: must start at 0 and end at N = 2"),
    (dict(cu_seqlens=torch.tensor([0, 2, 1, 2])), "cu_seqlens: decreases at segment 1"),
    (dict(hidden=torch.randn(2, 4, 1)), "hidden"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(hidden=torch.randn(2, 4), weight=torch.randn(100, 4), targets=torch.tensor([0, 1]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.lm_head_stats(args.pop("hidden"), args.pop("weight"), args.pop("targets"), backend="torch", **args)


def test_no_tokens_by_vocab_allocation():
    N, d, V = 4096, 8, 65543
    h, W, y = make(N, d, V, seed=6)
    full_logits = N * V * 4
    with LargestAllocation() as probe:
        ops.lm_head_stats(h, W, y, topk=50, backend="torch")
    assert probe.max_bytes < full_logits / 8, f"largest allocation {probe.max_bytes} B vs logits {full_logits} B"
    # the probe does see a materialised [N, V] tensor
    with LargestAllocation() as probe:
        lm_head_stats_naive(h[:512], W, y[:512])
    assert probe.max_bytes >= 512 * V * 4
