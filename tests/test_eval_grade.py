"""Grading: normalised exact match (always there), math-verify agreement (skipped without it), CHAMP's gold
answers, a graded file."""
import json

import pytest

from lark_fast.champ import champ_answers
from lark_fast.eval import Grader, exact_match, grade_file, normalize_answer
from lark_fast.eval.grade import math_verify_available

needs_math_verify = pytest.mark.skipif(not math_verify_available(),
                                       reason="math-verify is not installed (pip install 'lark_fast[eval]')")


@pytest.mark.parametrize("a,b", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\frac12", "\\frac{1}{2}"), ("10 \\text{ cm}", "10"), ("90^\\circ", "90"),
    ("x = 5", "5"), ("1,000", "1000"), ("\\text{No}", "no"), ("$3$.", "3"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("50\\%", "50"), ("x=2, y=1", "x=2,y=1"),
])
def test_exact_match_accepts_the_same_answer_written_differently(a, b):
    assert exact_match(a, b), (normalize_answer(a), normalize_answer(b))


@pytest.mark.parametrize("a,b", [("3", "4"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("x=2, y=1", "x=1, y=2"),
                                 ("1,2", "12"), ("-1", "1")])
def test_exact_match_rejects_different_answers(a, b):
    assert not exact_match(a, b)


@needs_math_verify
@pytest.mark.parametrize("pred,gold", [
    ("0.5", "\\frac{1}{2}"), ("\\frac{2}{4}", "1/2"), ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}"), ("2^{10}", "1024"),
    ("\\frac{2^n}{n+1}", "2^n/(n+1)"), ("\\dfrac{1}{n+1}", "1/(n+1)"),
])
def test_math_verify_accepts_equivalent_forms(pred, gold):
    assert Grader("math-verify")(pred, gold) == (True, "math-verify")


@needs_math_verify
@pytest.mark.parametrize("pred,gold", [("0.51", "\\frac{1}{2}"), ("\\sqrt{3}", "\\sqrt{2}"), ("2^{9}", "1024"),
                                       ("\\frac{2^n}{n}", "2^n/(n+1)"), ("(-1,1)", "[-1, 1]")])
def test_math_verify_rejects_wrong_answers(pred, gold):
    assert Grader("math-verify")(pred, gold)[0] is False


def test_grader_without_math_verify_says_what_to_install(monkeypatch):
    monkeypatch.setattr("lark_fast.eval.grade.math_verify_available", lambda: False)
    with pytest.raises(ValueError, match="pip install 'lark_fast\\[eval\\]'"):
        Grader("math-verify")
    with pytest.warns(UserWarning, match="exact match only"):
        g = Grader("auto")
    assert g.name == "exact" and g("\\dfrac{1}{2}", "\\frac12") == (True, "exact")
    assert g(None, "1") == (False, "no answer")


def test_champ_gold_answers():
    both = champ_answers("@@C(10, 5)@@, or equivalently @@252@@", "C(10, 5), or equivalently 252")
    assert both == ["C(10, 5)", "252"]
    assert champ_answers("The limit is @@(1+sqrt(4a+1))/2@@", "The limit is (1+sqrt(4a+1))/2") == ["(1+sqrt(4a+1))/2"]
    assert champ_answers("100 (i.e., all values)", "100 (i.e., all values)") == ["100"]
    assert champ_answers("0 is the only possible value", "0 is the only possible value") == ["0"]
    assert champ_answers("No integer solutions", "No integer solutions") == ["No integer solutions"]
    assert champ_answers("@@x=0, y=2@@ and @@x=9, y=11@@", "x=0, y=2 and x=9, y=11") == ["x=0, y=2 and x=9, y=11"]


def test_grade_file_takes_any_acceptable_answer(tmp_path):
    rows = [{"benchmark": "b", "problem_id": "p1", "sample": 0, "label": "m", "answers": ["C(10, 5)", "252"],
             "completion": "... \\boxed{252}"},
            {"benchmark": "b", "problem_id": "p1", "sample": 1, "label": "m", "answers": ["C(10, 5)", "252"],
             "completion": "no box here"},
            {"benchmark": "b", "problem_id": "p2", "sample": 0, "label": "m", "answers": ["3"],
             "completion": "\\boxed{2} no wait \\boxed{3}"}]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = grade_file(src, tmp_path / "graded.jsonl", grader="exact", progress=False)
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False, True]
    assert [g["extracted"] for g in graded] == ["252", None, "3"]
    assert summary == {"samples": 3, "correct": 2, "without_boxed_answer": 1, "grader": "exact"}


def test_grade_file_names_the_bad_line(tmp_path):
    src = tmp_path / "samples.jsonl"
    src.write_text(json.dumps({"benchmark": "b", "problem_id": "p", "sample": 0, "label": "m", "answers": ["1"],
                               "completion": "x"}) + "\n" + json.dumps({"benchmark": "b", "problem_id": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"samples.jsonl:2: sample: missing"):
        grade_file(src, tmp_path / "g.jsonl", grader="exact", progress=False)
