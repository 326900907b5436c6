"""ACC@k and pass@k: the estimator against enumeration of every k-subset, and a report on known verdicts."""
import itertools
import json

import pytest

from lark_fast.eval import pass_at_k, summarize, write_report


@pytest.mark.parametrize("n,c", [(5, 0), (5, 1), (5, 3), (5, 5), (4, 2), (1, 1)])
def test_pass_at_k_is_the_share_of_k_subsets_with_a_correct_sample(n, c):
    verdicts = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(verdicts, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError, match="needs at least"):
        pass_at_k(n, c, n + 1)


def rows(label, verdicts_per_problem, bench="b"):
    return [{"benchmark": bench, "label": label, "problem_id": f"p{i}", "sample": j, "answers": ["1"],
             "completion": "", "correct": v, "extracted": "1" if v else None, "finish_reason": "stop"}
            for i, vs in enumerate(verdicts_per_problem) for j, v in enumerate(vs)]


def test_summarize_known_verdicts():
    table = summarize(rows("a", [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]) + rows("b", [[0, 0, 0, 1]] * 3))
    a, b = table
    assert (a["label"], a["problems"], a["samples_per_problem"]) == ("a", 3, 4)
    assert a["acc"] == pytest.approx((0.25 + 1 + 0) / 3) and a["pass@1"] == pytest.approx(a["acc"])
    assert a["pass@4"] == pytest.approx(2 / 3) and b["pass@4"] == 1.0 and b["acc"] == 0.25 and b["acc_stderr"] == 0
    assert a["no_boxed_answer"] == pytest.approx(7 / 12)


def test_write_report(tmp_path):
    path = tmp_path / "graded.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows("m", [[True, False]] * 2, "champ")))
    table = write_report([path], tmp_path / "out", pass_ks=[1, 2])
    assert table[0]["pass@2"] == 1.0
    assert "| champ | m | 2 | 2 | 50.0% ± 0.0 | 50.0% | 100.0% | 50% |" in (tmp_path / "out" / "report.md").read_text()
