"""LARK selection (docs/method.md §5) against an independent sort-based implementation of the published rule."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lark_fast
from lark_fast import solver
from lark_fast.report import selection_summary
from lark_fast.select import write_train_set
from lark_fast.table import ScoreTable


def published_rule(e, B):
    """The published per-problem rule, written from docs/method.md §5 with a full sort."""
    e = np.asarray(e, dtype=np.float64)
    key = np.where(np.isnan(e), -np.inf, e)
    valid = np.isfinite(key)
    w = np.zeros(len(e))
    nv = int(valid.sum())
    if nv == 0:
        return w
    order = sorted(range(len(e)), key=lambda i: (-key[i], i))  # ties: lower index first
    if B >= nv:
        A = [i for i in order if valid[i]]
        t = key[valid].min() - 1e-8
    else:
        A, t = order[:B], key[order[B]]
    d = np.array([key[i] - t for i in A])
    if d.mean() <= 1e-12:
        w[A] = 1.0 / B
    else:
        w[A] = d / d.sum()
    return w


CASES = [
    ([0.3, 0.1, 0.5, 0.2], 2),
    ([0.3, np.nan, 0.5, 0.2], 2),            # NaN counts as -inf
    ([np.nan, np.nan, 0.1], 2),              # B >= #valid: t = min - 1e-8
    ([0.2, 0.2, 0.2, 0.2], 2),               # no spread: uniform 1/B
    ([0.5, 0.2, 0.2, 0.1], 2),               # tie at t: the selected 0.2 gets weight 0
    ([0.5, 0.3, 0.3, 0.3], 1),               # ties below the top
    ([1.0, 2.0], 5),                         # B >= K
    ([np.nan, np.nan], 1),                   # nothing valid
    ([-np.inf, 0.0, 1.0], 2),                # -inf is invalid too
    ([7.0], 1),
    ([1e-14, 0.0, 0.0], 1),                  # spread below 1e-12
    ([0.0, 0.0, 1e-106], 2),                 # a tie displaced by a later larger item keeps index order
    ([0.0, 0.5, 0.0, 1.0, 0.0], 3),
]


@pytest.mark.parametrize("e,B", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lark_rule_matches_published(e, B, dtype):
    got = solver.lark_weights(np.array(e, dtype=dtype), [0, len(e)], B)
    want = published_rule(np.array(e, dtype=dtype).astype(np.float64), B)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-15), (got, want)


def test_edge_case_values():
    assert np.allclose(solver.lark_weights(np.array([0.5, 0.2, 0.2, 0.1]), [0, 4], 2), [1, 0, 0, 0])
    assert np.allclose(solver.lark_weights(np.array([0.2] * 4), [0, 4], 2), [0.5, 0.5, 0, 0])
    w = solver.lark_weights(np.array([np.nan, 3.0, 1.0]), [0, 3], 3)
    assert w[0] == 0 and w.sum() == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(-5, 5), st.just(float("nan")), st.sampled_from([0.0, 1.0])),
                         min_size=1, max_size=12), min_size=1, max_size=6),
       st.integers(1, 8))
def test_lark_rule_property(groups, B):
    e = np.concatenate([np.array(g, dtype=np.float64) for g in groups])
    offsets = np.cumsum([0] + [len(g) for g in groups])
    w = solver.lark_weights(e, offsets, B)
    for g, a, b in zip(groups, offsets[:-1], offsets[1:]):
        assert np.allclose(w[a:b], published_rule(g, B), rtol=1e-12, atol=1e-15)
        if not np.all(np.isnan(g)):
            assert w[a:b].sum() == pytest.approx(1.0)
            assert (w[a:b] >= 0).all()


@pytest.mark.parametrize("args,match", [
    (([1.0, 2.0], [0, 3], 1), "offsets\\[-1\\] = 3 does not match len\\(energies\\) = 2"),
    (([1.0, 2.0], [1, 2], 1), "offsets\\[0\\] must be 0"),
    (([1.0, 2.0, 3.0], [0, 2, 1, 3], 1), "offsets: not non-decreasing at group 1"),
    (([1.0, 2.0], [0, 2], 0), "B: must be >= 1"),
    (([1.0, np.inf], [0, 1, 2], 1), "energies: \\+inf at index 1 \\(group 1\\)"),
    (([1.0], [0, 1], 1.5), "B: expected an integer"),
    (([1.0], [0.0, 1.0], 1), "offsets: expected integers"),
])
def test_bad_input(args, match):
    e, o, B = args
    with pytest.raises(ValueError, match=match):
        solver.lark_weights(np.array(e), np.array(o), B)


def _table():
    return ScoreTable({
        "problem_id": ["p1", "p2", "p1", "p1", "p2", "p3", "p1"],
        "candidate_id": ["a", "a", "b", "c", "b", "a", "d"],
        "teacher": ["T"] * 7,
        "status": ["ok", "ok", "ok", "template_error", "ok", "empty_assistant", "ok"],
        "g_hat": [0.3, 0.1, 0.5, 9.0, 0.2, np.nan, 0.1],
    })


def test_select_groups_by_problem_and_skips_unscorable():
    t = _table()
    w = lark_fast.select(t, B=2)
    # p1 valid: a .3, b .5, d .1 -> top-2 {b, a}, t = .1 -> b .4/.6, a .2/.6; c (9.0, not ok) never chosen
    # p2 has B = 2 valid candidates: t = min - 1e-8; p3 has none
    p2 = published_rule([0.1, 0.2], 2)
    assert np.allclose(w, [0.2 / 0.6, p2[0], 0.4 / 0.6, 0.0, p2[1], 0.0, 0.0], rtol=1e-12, atol=0)
    s = selection_summary(t, w, 2)["counts"]
    assert s == {"problems": 3, "candidates": 7, "valid_candidates": 5, "selected": 4,
                 "selected_with_zero_weight": 0, "problems_with_fewer_than_B_valid": 1,
                 "problems_without_valid_candidates": 1}
    with pytest.raises(ValueError, match="rule"):
        lark_fast.select(t, rule="nope")
    with pytest.raises(ValueError, match="no column 'rho'"):
        lark_fast.select(t, score_column="rho")


def test_train_set_schema(tmp_path):
    t = _table()
    w = lark_fast.select(t, B=2)
    pool = tmp_path / "pool.jsonl"
    recs = [{"problem_id": p, "candidate_id": c, "teacher": "T",
             "messages": [{"role": "user", "content": f"{p}?"}, {"role": "assistant", "content": f"{p}{c}"}]}
            for p, c in zip(t["problem_id"], t["candidate_id"])]
    pool.write_text("\n".join(json.dumps(r) for r in recs) + "\nnot json\n")
    out = tmp_path / "train.jsonl"
    counts = write_train_set(pool, t, w, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts["written"] == 4 and len(rows) == 4 and len(counts["issues"]) == 1
    assert counts["issues"][0].line == 8
    for row in rows:
        assert set(row) == {"messages", "meta"}
        assert set(row["meta"]) == {"problem_id", "candidate_id", "teacher", "score", "train_weight"}
        i = [k for k in range(7) if (t["problem_id"][k], t["candidate_id"][k]) ==
             (row["meta"]["problem_id"], row["meta"]["candidate_id"])][0]
        assert row["meta"]["train_weight"] == pytest.approx(w[i]) and row["meta"]["score"] == t["g_hat"][i]
        assert row["messages"][-1]["content"] == row["meta"]["problem_id"] + row["meta"]["candidate_id"]
    # a table from another pool is refused and no output is left behind
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(recs[0]) + "\n")
    with pytest.raises(ValueError, match="not in the pool"):
        write_train_set(other, t, w, tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_chi2_global_leaves_out_problems_without_a_valid_candidate():
    t = _table()  # p3's only candidate is unscorable
    with pytest.warns(UserWarning, match="1 of 3 problems have no valid candidate .* average 1 over the other 2"):
        w = lark_fast.select(t, rule="chi2_global", tau=0.5)
    assert w.sum() == pytest.approx(2.0) and w[5] == 0


def test_train_set_refuses_empty_pools_and_empty_selections(tmp_path):
    t = _table()
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        write_train_set(pool, t, lark_fast.select(t, B=2), tmp_path / "train.jsonl")
    pool.write_text("".join(json.dumps({"problem_id": p, "candidate_id": c, "teacher": "T", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n"
        for p, c in zip(t["problem_id"], t["candidate_id"])))
    with pytest.raises(ValueError, match="nothing to write: no candidate has a weight > 0"):
        write_train_set(pool, t, np.zeros(len(t)), tmp_path / "train.jsonl")
    assert list(tmp_path.iterdir()) == [pool]
