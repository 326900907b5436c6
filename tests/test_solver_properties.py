"""Hypothesis properties of the solvers (non-negativity, group sums, KKT, permutation invariance) and
bitwise determinism across runs and OpenMP thread counts."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lark_fast import solver
import solver_reference as ref

# Scores on a 1e-4 grid: ties are exact, and distinct energies differ by far more than double rounding of
# the gaps e − ν (energies 1e-38 apart are ties for the radius solver; see lark_fast.solver).
energy = st.one_of(st.integers(-3, 3).map(float), st.floats(-5, 5).map(lambda x: round(x, 4)),
                   st.sampled_from([np.nan, -np.inf]))
group = st.lists(energy, min_size=0, max_size=7)


@st.composite
def grouped(draw, max_groups=6):
    groups = draw(st.lists(group, min_size=1, max_size=max_groups))
    sizes = [len(g) for g in groups]
    e = np.array([x for g in groups for x in g], dtype=np.float64)
    o = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ref_mass = np.array(draw(st.lists(st.floats(0.05, 3.0), min_size=len(e), max_size=len(e))))
    perm = np.concatenate([o[g] + np.random.default_rng(draw(st.integers(0, 99))).permutation(sizes[g])
                           for g in range(len(sizes))]).astype(np.int64)
    return e, o, ref_mass, perm


def valid_counts(e, o):
    return ref.group_sums(ref.valid_mask(e), o).astype(int)


@settings(max_examples=150, deadline=None)
@given(grouped(), st.sampled_from([0.01, 0.2, 3.0]), st.sampled_from([None, 0.5]), st.booleans())
def test_chi2_weights_properties(data, tau, cap, use_ref):
    e, o, r, perm = data
    counts = valid_counts(e, o)
    rr = r if use_ref else None
    if cap is not None and np.any((counts > 0) & (counts * cap < 1)):
        with pytest.raises(ValueError, match=r"cap: .* \(group \d+\)"):
            solver.chi2_weights(e, o, tau=tau, ref=rr, cap=cap)
        return
    q = solver.chi2_weights(e, o, tau=tau, ref=rr, cap=cap)
    assert np.all(q >= 0) and np.all(q[~ref.valid_mask(e)] == 0)
    sums = np.array([q[o[g]:o[g + 1]].sum() for g in range(len(o) - 1)])
    np.testing.assert_allclose(sums, (counts > 0).astype(float), atol=1e-12)
    for g in range(len(o) - 1):
        sl = slice(o[g], o[g + 1])
        if counts[g]:
            p = ref.normalised_ref(e[sl], None if rr is None else rr[sl])
            assert ref.kkt_violation(q[sl], e[sl], p, tau, np.inf if cap is None else cap) < 1e-9
    qp = solver.chi2_weights(e[perm], o, tau=tau, ref=None if rr is None else rr[perm], cap=cap)
    np.testing.assert_allclose(qp, q[perm], rtol=1e-12, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(grouped(), st.sampled_from([0.0, 0.1, 1.0, 10.0]), st.booleans())
def test_chi2_radius_properties(data, radius, use_ref):
    e, o, r, perm = data
    rr = r if use_ref else None
    q = solver.chi2_weights(e, o, radius=radius, ref=rr)
    counts = valid_counts(e, o)
    for g in range(len(o) - 1):
        sl = slice(o[g], o[g + 1])
        if not counts[g]:
            assert np.all(q[sl] == 0)
            continue
        p = ref.normalised_ref(e[sl], None if rr is None else rr[sl])
        assert q[sl].sum() == pytest.approx(1.0, abs=1e-12) and np.all(q[sl] >= 0)
        d = ref.divergence(q[sl], p)
        top = ref.valid_mask(e[sl]) & (e[sl] == np.nanmax(np.where(ref.valid_mask(e[sl]), e[sl], np.nan)))
        d_max = 1.0 / p[top].sum() - 1.0  # all mass on the top energies, in proportion to p
        assert d <= radius + 1e-9 * (1 + radius)
        if radius < d_max - 1e-9:
            assert d == pytest.approx(radius, rel=1e-8, abs=1e-12)
        else:
            np.testing.assert_allclose(q[sl], np.where(top, p / p[top].sum(), 0.0), atol=1e-9)
    qp = solver.chi2_weights(e[perm], o, radius=radius, ref=None if rr is None else rr[perm])
    np.testing.assert_allclose(qp, q[perm], rtol=1e-9, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(grouped(), st.sampled_from([0.05, 1.0]), st.sampled_from([0.3, 0.6]))
def test_chi2_global_group_cap_properties(data, tau, share):
    e, o, r, perm = data
    counts = valid_counts(e, o)
    g = len(o) - 1
    cap = share * 4.0 / max(1, counts.sum())
    group_cap = share * 2.0 / max(1, (counts > 0).sum())
    room = np.sum(np.minimum(group_cap, cap * counts))
    if counts.sum() == 0 or room < 1:
        with pytest.raises(ValueError, match="energies|cap|group_cap"):
            solver.chi2_global(e, tau=tau, ref=r, cap=cap, offsets=o, group_cap=group_cap)
        return
    q = solver.chi2_global(e, tau=tau, ref=r, cap=cap, offsets=o, group_cap=group_cap)
    assert q.sum() == pytest.approx(1.0, abs=1e-12) and np.all(q >= 0) and np.all(q <= cap * (1 + 1e-12))
    totals = np.array([q[o[i]:o[i + 1]].sum() for i in range(g)])
    assert np.all(totals <= group_cap * (1 + 1e-12))
    p = ref.normalised_ref(e, r)
    assert ref.kkt_violation(q, e, p, tau, cap, o, group_cap) < 1e-8
    qp = solver.chi2_global(e[perm], tau=tau, ref=r[perm], cap=cap, offsets=o, group_cap=group_cap)
    np.testing.assert_allclose(qp, q[perm], rtol=1e-9, atol=1e-13)


@settings(max_examples=150, deadline=None)
@given(grouped(), st.integers(1, 8))
def test_lark_weights_properties(data, B):
    e, o, _, perm = data
    w = solver.lark_weights(e, o, B)
    np.testing.assert_allclose(w, ref.lark_rule(e, o, B), rtol=1e-12, atol=1e-15)
    assert np.all(w >= 0) and np.all(w[~ref.valid_mask(e)] == 0)
    distinct = all(len(set(e[o[g]:o[g + 1]])) == o[g + 1] - o[g] and ref.valid_mask(e[o[g]:o[g + 1]]).all()
                   for g in range(len(o) - 1))
    if distinct:  # with ties the rule breaks them by position, so only distinct energies permute freely
        np.testing.assert_allclose(solver.lark_weights(e[perm], o, B), w[perm], rtol=1e-12, atol=1e-15)


DETERMINISM_SCRIPT = r"""
import hashlib, numpy as np
from lark_fast import solver
rng = np.random.default_rng(0)
sizes = rng.integers(0, 40, size=12000)
o = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
n = int(o[-1])
e = rng.standard_normal(n)
e[rng.random(n) < 0.01] = np.nan
r = rng.dirichlet(np.ones(n))
out = [
    solver.lark_weights(e, o, 3),
    solver.chi2_weights(e, o, tau=0.3, ref=r),
    solver.chi2_weights(e, o, radius=0.7),
    solver.chi2_path(e, o),
    solver.chi2_global(e, tau=0.2, ref=r, cap=5.0 / n),
    solver.chi2_global(e, tau=0.2, cap=8.0 / n, offsets=o, group_cap=2.0 / len(sizes)),
    solver.chi2_global(e, radius=0.5, cap=8.0 / n, offsets=o, group_cap=2.0 / len(sizes)),
]
print(hashlib.sha256(b"".join(a.tobytes() for a in out)).hexdigest())
"""


def test_bitwise_deterministic_across_runs_and_thread_counts():
    digests = set()
    for threads in ("1", "2", "3", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        run = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT], env=env, capture_output=True, text=True,
                             check=True)
        digests.add(run.stdout.strip())
    assert len(digests) == 1, digests
