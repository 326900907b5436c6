"""Bad input: a ValueError naming the argument and, where there are groups, the first offending one."""
import numpy as np
import pytest

from lark_fast import solver

E = np.array([0.5, 1.0, 2.0, 0.0, 1.5, 3.0])
O = np.array([0, 2, 4, 6])

CASES = [
    ("offsets: not non-decreasing at group 1", solver.chi2_weights, (E, [0, 4, 2, 6]), dict(tau=1.0)),
    ("offsets: offsets\\[0\\] must be 0", solver.lark_weights, (E, [1, 4, 6]), dict(B=1)),
    ("offsets: offsets\\[-1\\] = 5 does not match len\\(energies\\) = 6", solver.chi2_path, (E, [0, 2, 5]), {}),
    ("offsets: expected integers", solver.lark_weights, (E, [0.0, 6.0]), dict(B=1)),
    ("B: must be >= 1, got 0", solver.lark_weights, (E, O), dict(B=0)),
    ("B: expected an integer", solver.lark_weights, (E, O), dict(B=2.5)),
    ("tau: must be positive and finite, got -1", solver.chi2_weights, (E, O), dict(tau=-1.0)),
    ("tau: must be positive and finite, got 0", solver.chi2_global, (E,), dict(tau=0.0)),
    ("tau: must be positive and finite, got nan", solver.chi2_weights, (E, O), dict(tau=np.nan)),
    ("tau, radius: give exactly one", solver.chi2_weights, (E, O), {}),
    ("tau, radius: give exactly one", solver.chi2_global, (E,), dict(tau=1.0, radius=0.5)),
    ("radius: must be >= 0 and finite, got -0.5", solver.chi2_global, (E,), dict(radius=-0.5)),
    ("ref: length 5 does not match len\\(energies\\) = 6", solver.chi2_weights, (E, O),
     dict(tau=1.0, ref=np.ones(5))),
    ("ref: reference masses must be positive and finite, got ref\\[3\\] = 0 \\(group 1\\)", solver.chi2_weights,
     (E, O), dict(tau=1.0, ref=[1, 1, 1, 0, 1, 1])),
    ("ref: reference masses must be positive and finite, got ref\\[4\\] = -2 \\(group 2\\)", solver.chi2_global,
     (E,), dict(tau=1.0, ref=[1, 1, 1, 1, -2, 1], offsets=O)),
    ("ref: reference masses must be positive and finite, got ref\\[0\\] = nan \\(group 0\\)", solver.chi2_path,
     (E, O), dict(ref=[np.nan, 1, 1, 1, 1, 1])),
    ("energies: \\+inf at index 2 \\(group 1\\)", solver.chi2_weights, (E * [1, 1, np.inf, 1, 1, 1], O),
     dict(tau=1.0)),
    ("energies: \\+inf at index 5 \\(group 2\\)", solver.chi2_path, (E * [1, 1, 1, 1, 1, np.inf], O), {}),
    ("energies: \\+inf at index 1; use a finite", solver.chi2_global, (E * [1, np.inf, 1, 1, 1, 1],), dict(tau=1.0)),
    ("energies: no valid", solver.chi2_global, (np.full(3, np.nan),), dict(tau=1.0)),
    ("energies: expected a 1-D", solver.chi2_weights, (np.zeros((2, 3)), [0, 6]), dict(tau=1.0)),
    ("cap: must be positive, got 0", solver.chi2_weights, (E, O), dict(tau=1.0, cap=0.0)),
    ("cap: c = 0.40000000000000002 times .* only 0.80000000000000004 < 1 \\(group 0\\)", solver.chi2_weights,
     (E, O), dict(tau=1.0, cap=0.4)),
    ("cap: c = 0.10000000000000001 times .* only 0.60000000000000009 < 1", solver.chi2_global, (E,),
     dict(tau=1.0, cap=0.1)),
    ("group_cap: the group caps .* only 0.8999.* < 1", solver.chi2_global, (E,),
     dict(tau=1.0, offsets=O, group_cap=0.3)),
    ("group_cap: must be >= 0 and finite, got -0.10000000000000001 \\(group 1\\)", solver.chi2_global, (E,),
     dict(tau=1.0, offsets=O, group_cap=[0.5, -0.1, 0.5])),
    ("group_cap: expected a scalar or one value per group \\(3\\)", solver.chi2_global, (E,),
     dict(tau=1.0, offsets=O, group_cap=[0.5, 0.5])),
    ("group_cap: needs offsets", solver.chi2_global, (E,), dict(tau=1.0, group_cap=0.5)),
    ("radius: r = 0.01 is below the smallest divergence the caps allow, D = .* \\(group 1\\)", solver.chi2_weights,
     (E, O), dict(radius=0.01, cap=0.7, ref=[1, 1, 1, 4, 1, 1])),
    ("radius: r = 0 is below the smallest divergence the caps allow", solver.chi2_global, (E,),
     dict(radius=0.0, offsets=O, group_cap=[0.2, 0.5, 0.5])),
]


@pytest.mark.parametrize("message, fn, args, kwargs", CASES, ids=[c[0][:40] for c in CASES])
def test_bad_input_names_argument_and_group(message, fn, args, kwargs):
    with pytest.raises(ValueError, match=message):
        fn(*args, **kwargs)


def test_first_offending_group_is_reported_whatever_the_thread_schedule():
    e = np.zeros(40_000)
    e[[25_001, 30_000, 39_999]] = np.inf
    o = np.arange(0, 40_001, 10)
    for fn, kw in ((solver.lark_weights, dict(B=3)), (solver.chi2_weights, dict(tau=1.0)), (solver.chi2_path, {})):
        with pytest.raises(ValueError, match=r"index 25001 \(group 2500\)"):
            fn(e, o, **kw)
