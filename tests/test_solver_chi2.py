"""chi2_weights and chi2_path against exact breakpoint oracles, bisection on τ, and a generic QP solver."""
import numpy as np
import pytest

from lark_fast import solver
import solver_reference as ref



def offsets_of(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def random_problem(seed, groups=40, max_size=9, nan_rate=0.1, ties=False):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, max_size + 1, size=groups)
    n = int(sizes.sum())
    e = rng.integers(-3, 4, size=n).astype(np.float64) if ties else rng.standard_normal(n)
    e[rng.random(n) < nan_rate] = np.nan
    r = np.concatenate([rng.dirichlet(np.ones(k)) if k else [] for k in sizes])
    return e, offsets_of(sizes), r


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize("cap", [None, 0.45])
@pytest.mark.parametrize("tau", [0.02, 0.3, 5.0])
def test_penalised_matches_breakpoint_oracle(tau, cap, with_ref, ties):
    e, o, r = random_problem(int(tau * 100) + 7 * ties, ties=ties)
    if cap is not None:  # keep only the groups the cap can fill
        sizes, valid = np.diff(o), ref.group_sums(ref.valid_mask(e), o)
        fits = (valid * cap >= 1) | (valid == 0)
        keep = np.repeat(fits, sizes)
        e, r, o = e[keep], r[keep], offsets_of(sizes[fits])
    rr = r if with_ref else None
    got = solver.chi2_weights(e, o, tau=tau, ref=rr, cap=cap)
    want = ref.chi2_groups(e, o, tau=tau, ref=rr, cap=np.inf if cap is None else cap)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize("cap", [None, 0.4])
@pytest.mark.parametrize("radius", [0.0, 0.05, 0.6])
def test_constrained_matches_bisection_oracle(radius, cap, with_ref):
    rng = np.random.default_rng(11)
    sizes = np.full(25, 6)
    e = rng.standard_normal(sizes.sum())
    r = rng.dirichlet(np.ones(6) * 3, size=25).ravel() if with_ref else None
    o = offsets_of(sizes)
    c = np.inf if cap is None else cap
    if cap is not None:  # r must be reachable under the cap: raise it to the group's least divergence
        radius = radius + 0.2
    got = solver.chi2_weights(e, o, radius=radius, ref=r, cap=cap)
    want = ref.chi2_groups(e, o, radius=radius, ref=r, cap=c)
    active = 0
    for g in range(25):
        sl = slice(o[g], o[g + 1])
        p = ref.normalised_ref(e[sl], None if r is None else r[sl])
        d_max = ref.divergence(ref.penalised(e[sl], p, 1e-11, c), p)  # the τ → 0 end of the path
        if radius < d_max - 1e-6:
            active += 1
            np.testing.assert_allclose(got[sl], want[sl], rtol=1e-7, atol=1e-9)
            assert ref.divergence(got[sl], p) == pytest.approx(radius, rel=1e-9, abs=1e-12)
        else:  # inactive: the oracle stops at τ = 1e-11, a hair before the limit
            np.testing.assert_allclose(got[sl], want[sl], atol=1e-6)
            assert ref.divergence(got[sl], p) <= radius + 1e-12
    assert active >= 20


def test_radius_zero_returns_reference_and_large_radius_is_inactive():
    e = np.array([0.3, 2.0, 2.0, -1.0, np.nan])
    r = np.array([1.0, 1.0, 3.0, 2.0, 5.0])
    o = [0, 5]
    p = np.array([1, 1, 3, 2, 0]) / 7
    np.testing.assert_allclose(solver.chi2_weights(e, o, radius=0.0, ref=r), p, rtol=1e-14)
    # Inactive: the maximiser of ⟨q, e⟩ closest to p splits the tied top pair in proportion to p.
    np.testing.assert_allclose(solver.chi2_weights(e, o, radius=50.0, ref=r), [0, 0.25, 0.75, 0, 0], atol=1e-12)
    # With a cap the top pair fills to c and the rest goes to the next energy.
    np.testing.assert_allclose(solver.chi2_weights(e, o, radius=50.0, ref=r, cap=0.4),
                               [0.2, 0.4, 0.4, 0, 0], atol=1e-12)


def test_nan_items_are_excluded_with_their_reference_mass():
    e = np.array([1.0, np.nan, 0.0, -np.inf, 0.5])
    r = np.array([1.0, 9.0, 1.0, 9.0, 2.0])
    got = solver.chi2_weights(e, [0, 5], tau=0.4, ref=r)
    np.testing.assert_allclose(got, solver.chi2_weights(e[[0, 2, 4]], [0, 3], tau=0.4, ref=r[[0, 2, 4]])
                               [[0, 0, 1, 0, 2]] * np.array([1, 0, 1, 0, 1]), rtol=1e-14)
    assert got[1] == got[3] == 0


@pytest.mark.parametrize("backend", ["cvxpy", "scipy"])
@pytest.mark.parametrize("form", ["tau", "radius"])
def test_generic_qp_solver_agrees(backend, form):
    if backend == "cvxpy":
        pytest.importorskip("cvxpy", reason="cvxpy (optional test dependency) is not installed")
    rng = np.random.default_rng(5)
    for trial in range(4):
        k = 7
        e = rng.standard_normal(k)
        p = rng.dirichlet(np.ones(k))
        cap = [np.inf, 0.3][trial % 2]
        kwargs = {"tau": 0.2} if form == "tau" else {"radius": 1.2}
        got = solver.chi2_weights(e, [0, k], ref=p, cap=None if np.isinf(cap) else cap, **kwargs)
        want = ref.qp(e, p, cap=cap, backend=backend, **kwargs)
        np.testing.assert_allclose(got, want, atol=1e-4)  # generic solvers are accurate to about 1e-5
        ref.assert_at_least_as_good(got, want, e, p, cap=cap, **kwargs)


def test_path_breakpoints_reproduce_lark_rule():
    rng = np.random.default_rng(2)
    sizes = rng.integers(2, 12, size=200)
    e = rng.standard_normal(sizes.sum())
    o = offsets_of(sizes)
    path = solver.chi2_path(e, o)
    for B in (1, 2, 3):
        has = sizes > B
        tau_b = np.where(has, path[o[:-1] + np.minimum(B, sizes) - 1], 1.0)
        for g in np.nonzero(has)[0][:60]:
            sl = slice(o[g], o[g + 1])
            q = solver.chi2_weights(e[sl], [0, sizes[g]], tau=tau_b[g])
            np.testing.assert_allclose(q, solver.lark_weights(e[sl], [0, sizes[g]], B), atol=1e-12)


def test_path_matches_support_sizes_and_formula():
    rng = np.random.default_rng(4)
    e = np.array([2.0, np.nan, -1.0, 0.5, 3.0, 0.5])
    r = rng.dirichlet(np.ones(6))
    path = solver.chi2_path(e, [0, 6], ref=r)
    v = ref.valid_mask(e)
    p = ref.normalised_ref(e, r)
    order = np.argsort(-np.where(v, e, -np.inf), kind="stable")[: v.sum()]
    want = [0.5 * np.sum(p[order[: j + 1]] * (e[order[: j + 1]] - e[order[j + 1]])) for j in range(v.sum() - 1)]
    np.testing.assert_allclose(path[:4], want, rtol=1e-14)
    assert np.all(np.isinf(path[4:]))
    # Just inside (τ_{j-1}, τ_j] the support has j items (the 0.5 tie enters together: τ_3 = τ_2).
    for j in (1, 2, 4):
        lo = path[j - 2] if j > 1 else 0.0
        q = solver.chi2_weights(e, [0, 6], tau=0.5 * (lo + path[j - 1]), ref=r)
        assert np.count_nonzero(q) == j
