"""lark_weights against the published rule re-written by a full sort (solver_reference.lark_rule)."""
import numpy as np
import pytest

from lark_fast import solver
import solver_reference as ref
from solver_reference import lark_rule


def offsets_of(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def check(e, sizes, B):
    o = offsets_of(sizes)
    got = solver.lark_weights(e, o, B)
    want = lark_rule(np.asarray(e, dtype=np.float64), o, B)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    return got


@pytest.mark.parametrize("B", [1, 3, 9, 10, 12])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_groups(B, dtype):
    rng = np.random.default_rng(B)
    sizes = rng.integers(0, 14, size=300)
    e = rng.standard_normal(sizes.sum()).astype(dtype)
    w = check(e, sizes, B)
    o = offsets_of(sizes)
    sums = ref.group_sums(w, o)[sizes > 0]
    np.testing.assert_allclose(sums[sizes[sizes > 0] > B], 1.0, rtol=1e-12)


def test_nan_and_minus_inf_never_selected_while_valid_items_remain():
    e = np.array([np.nan, 1.0, -np.inf, 3.0, 2.0, np.nan])
    w = check(e, [6], 2)  # A = {3, 2}, t = 1
    np.testing.assert_allclose(w, [0, 0, 0, 2 / 3, 1 / 3, 0], rtol=1e-15)


def test_b_at_least_valid_uses_min_minus_1e8():
    e = np.array([np.nan, 2.0, 1.0, 0.5])
    w = check(e, [4], 5)
    t = 0.5 - 1e-8
    np.testing.assert_allclose(w[1:], (e[1:] - t) / np.sum(e[1:] - t), rtol=1e-12)


def test_tie_at_threshold_gets_weight_zero():
    # B = 2: A = {3, 1 (the first 1)}, t = 1 (the second 1): the tied member of A gets 0.
    e = np.array([3.0, 1.0, 1.0, 0.0])
    w = check(e, [4], 2)
    np.testing.assert_array_equal(w, [1.0, 0.0, 0.0, 0.0])


def test_all_equal_energies_give_uniform_over_B():
    w = check(np.full(5, 0.7), [5], 3)
    np.testing.assert_array_equal(w, [1 / 3, 1 / 3, 1 / 3, 0, 0])
    w = check(np.full(2, 0.7), [2], 3)  # B >= #valid: t = min - 1e-8 leaves a spread of 1e-8 each
    np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-12)


def test_empty_and_all_invalid_groups_get_nothing():
    e = np.array([np.nan, np.nan, 1.0, 2.0])
    w = check(e, [0, 2, 0, 2, 0], 1)
    np.testing.assert_array_equal(w[:2], 0)
    assert w[3] == 1.0


def test_large_budget_uses_selection_path():
    rng = np.random.default_rng(7)
    e = rng.integers(0, 30, size=2000).astype(np.float64)  # many ties
    for B in (31, 40, 99):
        check(e, [100] * 20, B)


def test_float32_equals_float64_of_the_same_values():
    rng = np.random.default_rng(3)
    e32 = rng.standard_normal(330).astype(np.float32)
    o = offsets_of([33] * 10)
    np.testing.assert_array_equal(solver.lark_weights(e32, o, 3), solver.lark_weights(e32.astype(np.float64), o, 3))


def test_plus_inf_rejected_with_group():
    with pytest.raises(ValueError, match=r"energies: \+inf at index 4 \(group 1\)"):
        solver.lark_weights(np.array([0.0, 1, 2, 3, np.inf]), [0, 3, 5], 1)
