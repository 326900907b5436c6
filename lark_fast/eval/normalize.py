"""Normalised exact match of two answers, the grader used when math-verify is not installed
(docs/method.md §10.2). Both sides go through the same normalisation; equal strings match."""
from __future__ import annotations

import re

_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_UNIT_AFTER_NUMBER = re.compile(r"^(-?[\d.,/]+)\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}$")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|\\left|\\right|\\displaystyle|~")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z](_\{?\w+\}?)?\s*=\s*(?!.*=)")


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer: no ``$``, spacing commands, ``\\left``/``\\right``, units written
    as ``\\text{...}`` after a number, degree signs, ``\\%``, trailing period, thousands separators, or a
    single-variable assignment ``x = ``; ``\\dfrac``/``\\tfrac`` as ``\\frac``, ``\\frac12`` as
    ``\\frac{1}{2}``, other ``\\text{...}`` as their content; whitespace removed, lower case."""
    s = answer.replace("\\$", "").replace("$", "").strip()
    s = _SPACING.sub("", s)
    unit = _UNIT_AFTER_NUMBER.match(s)
    if unit:
        s = unit.group(1)
    s = _TEXT.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    for token in ("^\\circ", "^{\\circ}", "\\circ", "°", "\\%", "%"):
        s = s.replace(token, "")
    s = s.strip().rstrip(".").strip()
    s = _ASSIGNMENT.sub("", s)
    s = re.sub(r"\s+", "", s)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s.lower()


def exact_match(prediction: str, gold: str) -> bool:
    """Whether the two answers are equal after ``normalize_answer``."""
    return normalize_answer(prediction) == normalize_answer(gold)
