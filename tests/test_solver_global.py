"""chi2_global against a global breakpoint oracle, bisection on the outer root, and a generic QP solver."""
import numpy as np
import pytest

from lark_fast import solver
import solver_reference as ref


def offsets_of(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def problem(seed, groups=30, max_size=8):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, max_size + 1, size=groups)
    e = rng.standard_normal(sizes.sum())
    e[rng.random(len(e)) < 0.05] = np.nan
    r = rng.dirichlet(np.ones(len(e)))
    return e, offsets_of(sizes), r


@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize("cap_scale", [None, 3.0])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_penalised_without_group_caps_matches_breakpoint_oracle(tau, cap_scale, with_ref):
    e, o, r = problem(1)
    n_valid = ref.valid_mask(e).sum()
    cap = None if cap_scale is None else cap_scale / n_valid
    rr = r if with_ref else None
    got = solver.chi2_global(e, tau=tau, ref=rr, cap=cap)
    p = ref.normalised_ref(e, rr)
    want = ref.global_penalised(e, p, tau, np.inf if cap is None else cap)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-13)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("per_group", [False, True])
@pytest.mark.parametrize("cap_scale", [None, 4.0])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_penalised_with_group_caps_matches_bisection_oracle(tau, cap_scale, per_group):
    e, o, r = problem(2)
    g = len(o) - 1
    n_valid = ref.valid_mask(e).sum()
    cap = None if cap_scale is None else cap_scale / n_valid
    rng = np.random.default_rng(9)
    group_cap = rng.uniform(0.5, 2.0, size=g) / g if per_group else 1.5 / g
    got = solver.chi2_global(e, tau=tau, ref=r, cap=cap, offsets=o, group_cap=group_cap)
    p = ref.normalised_ref(e, r)
    want = ref.global_penalised(e, p, tau, np.inf if cap is None else cap, o, group_cap)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    totals = ref.group_sums(got, o)[np.diff(o) > 0]
    caps = np.broadcast_to(group_cap, (g,))[np.diff(o) > 0]
    assert np.all(totals <= caps * (1 + 1e-12))
    assert np.sum(totals >= caps * (1 - 1e-9)) >= 2  # some groups are held at their cap


@pytest.mark.parametrize("group_caps", [False, True])
@pytest.mark.parametrize("cap_scale", [None, 4.0])
def test_constrained_matches_bisection_oracle(cap_scale, group_caps):
    e, o, r = problem(3, groups=12)
    g = len(o) - 1
    cap = None if cap_scale is None else cap_scale / ref.valid_mask(e).sum()
    kw = dict(offsets=o, group_cap=2.0 / g) if group_caps else {}
    got = solver.chi2_global(e, radius=0.8, ref=r, cap=cap, **kw)
    p = ref.normalised_ref(e, r)
    want = ref.global_constrained(e, p, 0.8, np.inf if cap is None else cap, kw.get("offsets"), kw.get("group_cap"))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-10)
    assert ref.divergence(got, p) == pytest.approx(0.8, rel=1e-9)


def test_one_group_equals_chi2_weights():
    e, _, r = problem(4)
    n = len(e)
    for kw in (dict(tau=0.3), dict(tau=0.3, cap=5.0 / n), dict(radius=0.5), dict(radius=2.0, cap=4.0 / n)):
        np.testing.assert_allclose(solver.chi2_global(e, ref=r, **kw), solver.chi2_weights(e, [0, n], ref=r, **kw),
                                   rtol=1e-10, atol=1e-14)


def test_group_cap_zero_and_inactive_radius():
    e = np.array([3.0, 2.0, 1.0, 0.0])
    got = solver.chi2_global(e, tau=0.5, offsets=[0, 2, 4], group_cap=[0.0, 1.0])
    np.testing.assert_array_equal(got[:2], 0.0)
    np.testing.assert_allclose(got[2:], [0.625, 0.375], rtol=1e-14)  # s = 1: q = (e − ν)/4 with ν = −1.5
    np.testing.assert_allclose(solver.chi2_global(e, radius=100.0, cap=0.3), [0.3, 0.3, 0.3, 0.1], atol=1e-12)


@pytest.mark.parametrize("backend", ["cvxpy", "scipy"])
def test_generic_qp_solver_agrees(backend):
    if backend == "cvxpy":
        pytest.importorskip("cvxpy", reason="cvxpy (optional test dependency) is not installed")
    rng = np.random.default_rng(6)
    sizes = [3, 4, 2, 5]
    o = offsets_of(sizes)
    e = rng.standard_normal(o[-1])
    p = rng.dirichlet(np.ones(o[-1]))
    caps = np.array([0.2, 0.5, 0.3, 0.35])
    for kw in (dict(tau=0.1), dict(radius=1.0)):
        got = solver.chi2_global(e, ref=p, cap=0.15, offsets=o, group_cap=caps, **kw)
        want = ref.qp(e, p, cap=0.15, offsets=o, group_cap=caps, backend=backend, **kw)
        np.testing.assert_allclose(got, want, atol=1e-4)  # generic solvers are accurate to about 1e-5
        ref.assert_at_least_as_good(got, want, e, p, cap=0.15, offsets=o, group_cap=caps, **kw)


def test_many_chunks_match_the_oracle():
    rng = np.random.default_rng(8)
    sizes = rng.integers(1, 20, size=9000)  # > 1 chunk of 2^15 items
    o = offsets_of(sizes)
    e = rng.standard_normal(o[-1]).astype(np.float32)
    n = o[-1]
    got = solver.chi2_global(e, tau=0.2, cap=20.0 / n, offsets=o, group_cap=2.0 / len(sizes))
    p = np.full(n, 1.0 / n)
    totals = ref.group_sums(got, o)
    assert np.all(totals <= 2.0 / len(sizes) * (1 + 1e-12))
    assert np.sum(totals >= 2.0 / len(sizes) * (1 - 1e-12)) > 100  # the group caps bind
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    assert ref.kkt_violation(got, e.astype(np.float64), p, 0.2, 20.0 / n, o, 2.0 / len(sizes)) < 1e-9


def test_kkt_check_detects_a_perturbed_solution():
    rng = np.random.default_rng(12)
    e = rng.standard_normal(200)
    q = solver.chi2_global(e, tau=0.3)
    p = np.full(200, 1 / 200)
    assert ref.kkt_violation(q, e, p, 0.3) < 1e-12
    free = np.nonzero(q > 0)[0]
    i, j = free[np.argmax(e[free])], free[np.argmin(e[free])]
    q[[i, j]] = q[[j, i]]
    assert ref.kkt_violation(q, e, p, 0.3) > 1e-3


def test_kkt_check_accepts_any_shared_threshold_when_it_is_only_bounded():
    # Group 1's single item is capped for every ν ≤ −0.107 and group 0 is held at its cap (ν_0 = −0.12), so
    # F(ν) = 1 on a whole interval: the shared ν is any value ≤ ν_0 (found by hypothesis).
    e, o, r = np.array([0.0, 0.0, 0.0, 0.0, -1.0, 0.0]), np.array([0, 5, 6]), np.array([1.0, 1, 1, 1, 1, 3])
    cap, tau = 0.4, 0.05
    q = solver.chi2_global(e, tau=tau, ref=r, cap=cap, offsets=o, group_cap=0.6)
    np.testing.assert_allclose(q, [0.15, 0.15, 0.15, 0.15, 0.0, 0.4], rtol=1e-12)
    p = ref.normalised_ref(e, r)
    np.testing.assert_allclose(q, ref.global_penalised(e, p, tau, cap, o, 0.6), rtol=1e-9, atol=1e-13)
    assert ref.kkt_violation(q, e, p, tau, cap, o, 0.6) < 1e-12
