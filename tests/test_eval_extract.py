"""The final answer of a completion: the last \\boxed{...}, on a table of hard cases."""
import pytest

from lark_fast.eval import boxed_answers, last_boxed

CASES = [
    ("so the answer is $\\boxed{42}$.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),                                  # nested braces
    ("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\dfrac{\\sqrt{3}}{2}"),                # \dfrac, two levels
    ("\\boxed{x^{2}+\\left(\\frac{a}{b}\\right)}", "x^{2}+\\left(\\frac{a}{b}\\right)"),
    ("first \\boxed{3}, then corrected: \\boxed{5}", "5"),                       # several: the last
    ("\\fbox{7}", "7"),
    ("\\boxed 9 is it", "9"),                                                    # brace-less form
    ("\\boxed {12}", "12"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),                                       # escaped braces are content
    ("\\boxed{10 \\text{ cm}}", "10 \\text{ cm}"),                               # units kept for the grader
    ("\\boxed{ 3 }", "3"),
    ("The answer is 42.", None),                                                 # none
    ("\\boxed{12", None),                                                        # cut at max_new_tokens
    ("\\boxedfoo{3}", None),                                                     # another command
    ("\\boxed{}", ""),
    ("$\\boxed{1}$ and $\\boxed{2}$ and \\boxed{\\text{No}}", "\\text{No}"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_boxed_answers_in_order_and_unclosed_box_ignored():
    assert boxed_answers("\\boxed{1} \\fbox{2} \\boxed{\\frac{3}{4}} \\boxed{5") == ["1", "2", "\\frac{3}{4}"]
