"""The vector kernels (csrc/simd.hpp): every instruction set gives the same bits, the LARK kernels agree
with the published rule on every block shape, lark_weights(out=...), and chi2_global on inputs large
enough for its sampled start and its speculative last write."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lark_fast import solver
import solver_reference as ref

SCRIPT = r"""
import hashlib, sys
import numpy as np
from lark_fast import solver
rng = np.random.default_rng(5)
out = []
for k in (1, 3, 8, 10, 33, 64, 65, 200):
    for dtype in (np.float64, np.float32):
        e = rng.standard_normal(k * 37).astype(dtype)
        for B in (1, 3, 7, 8):
            out.append(solver.lark_weights(e, np.arange(0, k * 37 + 1, k), B))
sizes = rng.integers(0, 90, size=3000)
o = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
n = int(o[-1])
ties = rng.integers(-3, 4, size=n).astype(np.float64)
ties[rng.random(n) < 0.1] = np.nan
ties[rng.random(n) < 0.05] = -np.inf
for B in range(1, 10):
    out.append(solver.lark_weights(ties, o, B))
e = rng.standard_normal(n)
e[rng.random(n) < 0.01] = np.nan
r = rng.dirichlet(np.ones(n))
g = len(sizes)
out += [
    solver.chi2_global(e, tau=0.2, ref=r, cap=5.0 / n),
    solver.chi2_global(e, tau=0.2, cap=8.0 / n, offsets=o, group_cap=2.0 / g),
    solver.chi2_global(e, tau=0.2, ref=r, cap=8.0 / n, offsets=o, group_cap=2.0 / g),
    solver.chi2_global(e, radius=0.5, cap=8.0 / n, offsets=o, group_cap=2.0 / g),
    solver.chi2_global(e.astype(np.float32), radius=0.5, ref=r, cap=8.0 / n),
]
big = rng.standard_normal(2_500_000)
ob = np.arange(0, len(big) + 1, 10)
out += [
    solver.chi2_global(big, tau=0.2, cap=5.0 / len(big)),
    solver.chi2_global(big, tau=0.2, cap=5.0 / len(big), offsets=ob, group_cap=1.5 / (len(ob) - 1)),
]
print(solver.simd(), hashlib.sha256(b"".join(a.tobytes() for a in out)).hexdigest())
"""


def test_every_instruction_set_gives_the_same_bits():
    digests = {}
    for level in ("avx512", "avx2", "generic"):  # capped to what this CPU has
        env = dict(os.environ, LARK_FAST_SIMD=level, OMP_NUM_THREADS="2")
        run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
        used, digest = run.stdout.split()
        digests[used] = digest
    assert len(set(digests.values())) == 1, digests


@pytest.mark.parametrize("k", [1, 2, 5, 8, 9, 10, 33, 64, 65, 130])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lark_equal_groups_match_the_published_rule(k, dtype):
    rng = np.random.default_rng(k)
    g = 41  # blocks of 8, 4 and 2 groups and a partial block
    e = rng.integers(-4, 5, size=k * g).astype(dtype)  # ties at every rank
    e[rng.random(k * g) < 0.1] = np.nan
    o = np.arange(0, k * g + 1, k)
    for B in (1, 2, 3, 6, 7):
        got = solver.lark_weights(e, o, B)
        np.testing.assert_allclose(got, ref.lark_rule(e.astype(np.float64), o, B), rtol=1e-12, atol=1e-15)


def test_lark_blocks_mixing_short_and_long_groups():
    rng = np.random.default_rng(3)
    sizes = rng.choice([0, 3, 10, 64, 65, 300], size=200)
    o = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    e = rng.standard_normal(o[-1])
    e[rng.random(o[-1]) < 0.05] = -np.inf
    for B in (1, 3, 7):
        np.testing.assert_allclose(solver.lark_weights(e, o, B), ref.lark_rule(e, o, B), rtol=1e-12, atol=1e-15)


def test_lark_out_argument():
    rng = np.random.default_rng(0)
    e = rng.standard_normal(1000)
    o = np.arange(0, 1001, 10)
    buf = np.full(1000, 7.0)
    got = solver.lark_weights(e, o, 3, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, solver.lark_weights(e, o, 3))
    for bad, message in [(np.zeros(999), "out: length 999 does not match len\\(energies\\) = 1000"),
                         (np.zeros(1000, dtype=np.float32), "out: expected float64, got float32"),
                         (np.zeros(2000)[::2], "out: expected a writeable 1-D contiguous array"),
                         (np.zeros((10, 100)), "out: expected a writeable 1-D contiguous array")]:
        with pytest.raises(ValueError, match=message):
            solver.lark_weights(e, o, 3, out=bad)
    frozen = np.zeros(1000)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        solver.lark_weights(e, o, 3, out=frozen)


@pytest.mark.parametrize("order", ["random", "sorted"])
@pytest.mark.parametrize("groups", [False, True])
def test_chi2_global_large_inputs_satisfy_kkt(order, groups):
    # > 64 chunks of 2^15 items: the sampled start and the speculative last write are used.
    rng = np.random.default_rng(11)
    n = 2_400_000
    e = rng.standard_normal(n)
    if order == "sorted":  # the sample sees evenly spaced slices of a sorted array
        e.sort()
    e[rng.random(n) < 0.01] = np.nan
    o = np.arange(0, n + 1, 12) if groups else None
    g = n // 12
    cap, group_cap, tau = 6.0 / n, (1.4 / g if groups else None), 0.2
    q = solver.chi2_global(e, tau=tau, cap=cap, offsets=o, group_cap=group_cap)
    assert q.sum() == pytest.approx(1.0, abs=1e-11)
    assert np.all(q >= 0) and np.all(q <= cap * (1 + 1e-12)) and np.all(q[np.isnan(e)] == 0)
    p = ref.normalised_ref(e, None)
    if groups:
        totals = ref.group_sums(q, o)
        assert np.all(totals <= group_cap * (1 + 1e-12))
        assert np.sum(totals >= group_cap * (1 - 1e-12)) > 1000  # the group caps bind
    assert ref.kkt_violation(q, e, p, tau, cap, o, group_cap) < 1e-9
