"""lark_fast.select with the χ² methods: grouping by problem, scaling and units of the caps."""
import numpy as np
import pytest

from lark_fast import solver
from lark_fast.cli import build_parser
from lark_fast.select import select


def table(seed=0):
    rng = np.random.default_rng(seed)
    pid = rng.choice(["a", "b", "c", "d"], size=30)
    g = rng.standard_normal(30)
    status = np.where(rng.random(30) < 0.1, "truncated", "ok").astype(object)
    return {"problem_id": pid.astype(object), "g_hat": g, "status": status}


def grouped(t):
    order, offsets = solver.group_offsets(t["problem_id"])
    e = np.where(t["status"] == "ok", t["g_hat"], np.nan)[order]
    return order, offsets, e


def test_chi2_is_chi2_weights_per_problem():
    t = table()
    order, offsets, e = grouped(t)
    w = select(t, rule="chi2", tau=0.2, cap=0.5)
    np.testing.assert_array_equal(w[order], solver.chi2_weights(e, offsets, tau=0.2, cap=0.5))
    assert np.all(w[t["status"] != "ok"] == 0)
    for p in "abcd":
        assert w[t["problem_id"] == p].sum() == pytest.approx(1.0)


def test_chi2_global_sums_to_problems_with_caps_in_problem_units():
    t = table(1)
    order, offsets, e = grouped(t)
    g = len(offsets) - 1
    w = select(t, rule="chi2_global", radius=0.5, cap=0.6, group_cap=1.3)
    np.testing.assert_allclose(w[order], g * solver.chi2_global(e, radius=0.5, cap=0.6 / g, offsets=offsets,
                                                                group_cap=1.3 / g), rtol=1e-15)
    assert w.sum() == pytest.approx(g) and w.max() <= 0.6 + 1e-12
    assert max(w[t["problem_id"] == p].sum() for p in "abcd") <= 1.3 + 1e-12


def test_wrong_parameters_for_the_rule_are_rejected():
    with pytest.raises(ValueError, match="only for rule"):
        select(table(), rule="lark", tau=0.1)
    with pytest.raises(ValueError, match="group_cap: only for rule='chi2_global'"):
        select(table(), rule="chi2", tau=0.1, group_cap=1.0)
    with pytest.raises(ValueError, match="tau, radius: give exactly one"):
        select(table(), rule="chi2")


def test_method_is_a_deprecated_spelling_of_rule():
    t = table()
    with pytest.warns(DeprecationWarning, match="rule="):
        old = select(t, method="chi2", tau=0.2)
    np.testing.assert_array_equal(old, select(t, rule="chi2", tau=0.2))
    args = build_parser().parse_args(["select", "--scores", "s", "--input", "p", "--output", "t", "--method", "chi2"])
    assert args.method == "chi2"  # cmd_select maps it to --rule with a deprecation note


def test_cli_select_flags():
    args = build_parser().parse_args(["select", "--scores", "s.parquet", "--input", "p.jsonl", "--output", "t.jsonl",
                                      "--rule", "chi2_global", "--tau", "0.2", "--cap", "0.5",
                                      "--group-cap", "1.5"])
    assert (args.rule, args.tau, args.radius, args.cap, args.group_cap) == ("chi2_global", 0.2, None, 0.5, 1.5)
