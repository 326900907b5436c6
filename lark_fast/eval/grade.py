"""Grading a completion against the gold answer: its last boxed answer (``extract.last_boxed``), then
normalised exact match, then math-verify when it is installed (docs/method.md §10.2)."""
from __future__ import annotations

import importlib.util
import warnings
from typing import Optional

from .extract import last_boxed
from .normalize import exact_match

GRADERS = ("auto", "math-verify", "exact")
INSTALL_MATH_VERIFY = "pip install 'lark_fast[eval]' (or math-verify)"


def math_verify_available() -> bool:
    return importlib.util.find_spec("math_verify") is not None


class Grader:
    """``grader(prediction, gold) -> (correct, graded_by)``; ``graded_by`` is "exact" when the normalised
    strings are equal, "math-verify" when math-verify decided, "exact" again when it could not parse
    one side. ``name``: "auto" (math-verify if installed, else exact match, with a warning), "math-verify"
    (raises without it) or "exact"."""

    def __init__(self, name: str = "auto"):
        if name not in GRADERS:
            raise ValueError(f"grader: expected one of {', '.join(GRADERS)}, got {name!r}")
        available = math_verify_available()
        if name == "math-verify" and not available:
            raise ValueError(f"grader math-verify: math-verify is not installed; {INSTALL_MATH_VERIFY}")
        if name == "auto" and not available:
            warnings.warn(f"math-verify is not installed ({INSTALL_MATH_VERIFY}); grading by normalised exact "
                          "match only, which rejects equivalent forms such as 0.5 and \\frac{1}{2}", stacklevel=2)
        self.use_math_verify = name != "exact" and available
        self.name = "math-verify" if self.use_math_verify else "exact"
        self._gold_cache: dict = {}

    def __call__(self, prediction: Optional[str], gold: str) -> tuple:
        if prediction is None:
            return False, "no answer"
        if exact_match(prediction, gold):
            return True, "exact"
        if not self.use_math_verify:
            return False, "exact"
        from math_verify import verify
        g, p = self._gold(gold), _parse(prediction)
        if not g or not p:
            return False, "exact"
        return bool(verify(g, p)), "math-verify"

    def _gold(self, gold: str) -> list:
        if gold not in self._gold_cache:
            self._gold_cache[gold] = _parse(gold)
        return self._gold_cache[gold]


def _parse(answer: str) -> list:
    """math-verify's parse of an answer as LaTeX, else as a plain expression (``2^n/(n+1)``)."""
    from math_verify import ExprExtractionConfig, parse
    return parse(f"${answer}$") or parse(answer, extraction_config=[ExprExtractionConfig()])


def grade_completion(grader: Grader, completion: str, gold: str) -> dict:
    """``{"extracted", "correct", "graded_by"}`` of one completion."""
    extracted = last_boxed(completion)
    correct, graded_by = grader(extracted, gold)
    return {"extracted": extracted, "correct": correct, "graded_by": graded_by}


def grade_file(samples, output, *, grader: str = "auto", progress: bool = True) -> dict:
    """Grades every sample of ``samples`` (``eval generate``'s JSONL) and writes them to ``output`` with
    ``extracted``, ``correct`` and ``graded_by`` added. A sample is correct when its last boxed answer
    matches any of the problem's acceptable answers. Returns counts."""
    from tqdm.auto import tqdm

    from ..table import write_jsonl
    from .samples import SAMPLE_FIELDS, read_rows

    rows = read_rows(samples, SAMPLE_FIELDS)
    judge = Grader(grader)
    graded = []
    for row in tqdm(rows, unit="sample", desc="grade", disable=not progress):
        verdicts = [grade_completion(judge, row["completion"], gold) for gold in row["answers"]]
        graded.append({**row, **next((v for v in verdicts if v["correct"]), verdicts[0])})
    write_jsonl(output, graded)
    return {"samples": len(graded), "correct": sum(r["correct"] for r in graded),
            "without_boxed_answer": sum(r["extracted"] is None for r in graded), "grader": judge.name}
