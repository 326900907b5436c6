"""Benchmarks to evaluate a student on: problems with gold answers, read and validated.

A benchmark is a ``.jsonl`` file (one object per line), a ``.json`` file (a list of objects), a
``.parquet`` file, or ``champ`` (CHAMP's problems and gold answers from the installed
``champ-dataset``). Each object has ``problem`` (or ``prompt``), the question as the student sees it;
``answer``, the gold answer (a string or number, or a list of acceptable forms); and optionally
``problem_id`` (default: its line or row number), ``benchmark`` (default: the file's stem) and
``family``, which picks the system prompt (``SYSTEM_PROMPTS``; default: the command's ``--family``).
Errors name the file, line and field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

SYSTEM_PROMPTS = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "multiple-choice": "Please reason step by step, and put the letter of your final choice within \\boxed{}.",
    "none": None,
}
BUILTIN = ("champ",)


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    problem_id: str
    problem: str
    answers: tuple  # acceptable gold answers, as strings
    family: str

    def messages(self, system_prompt: Optional[str]) -> list:
        """The chat the student answers: its family's system prompt (or ``system_prompt``), then the problem."""
        system = SYSTEM_PROMPTS[self.family] if system_prompt is None else system_prompt
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": self.problem}]


def _rows(source: str) -> Iterable[tuple]:
    """(where, object) of every row of a benchmark file."""
    path = Path(source)
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq
        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}: row {i}", row
    elif name.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{i}", json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{i}: invalid JSON: {e.msg}") from None
    elif name.endswith(".json"):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a list of objects, got {type(rows).__name__}")
        for i, row in enumerate(rows, start=1):
            yield f"{path}: item {i}", row
    else:
        raise ValueError(f"{source}: unknown benchmark format; expected .jsonl, .json, .parquet or one of "
                         f"{', '.join(BUILTIN)}")


def _answers(where: str, value) -> tuple:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        finite = not isinstance(v, float) or math.isfinite(v)
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not finite:
            raise ValueError(f"{where}: answer: expected a string, a number or a list of them, got {v!r}")
        if not str(v).strip():
            raise ValueError(f"{where}: answer: empty")
        out.append(str(v).strip())
    if not out:
        raise ValueError(f"{where}: answer: empty list")
    return tuple(out)


def parse_item(where: str, row, position: int, default_benchmark: str, family: str) -> BenchmarkItem:
    """One validated benchmark row; raises ValueError naming ``where`` and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    problem = row.get("problem", row.get("prompt"))
    if problem is None:
        raise ValueError(f"{where}: problem: missing (or prompt)")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"{where}: problem: expected a non-empty string, got {problem!r}")
    if "answer" not in row:
        raise ValueError(f"{where}: answer: missing")
    pid = row.get("problem_id", position)
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise ValueError(f"{where}: problem_id: expected a non-empty string or integer, got {pid!r}")
    fam = row.get("family", family)
    if fam not in SYSTEM_PROMPTS:
        raise ValueError(f"{where}: family: expected one of {', '.join(SYSTEM_PROMPTS)}, got {fam!r}")
    bench = row.get("benchmark", default_benchmark)
    if not isinstance(bench, str) or not bench.strip():
        raise ValueError(f"{where}: benchmark: expected a non-empty string, got {bench!r}")
    return BenchmarkItem(bench, str(pid), problem, _answers(where, row["answer"]), fam)


def read_benchmark(source, *, family: str = "math", exclude: Iterable[str] = ()) -> list:
    """The validated items of a benchmark (see the module docstring), without the problems whose id is
    in ``exclude`` (e.g. a training pool's). Raises ValueError on a bad row or a duplicate
    (benchmark, problem_id)."""
    if family not in SYSTEM_PROMPTS:
        raise ValueError(f"family: expected one of {', '.join(SYSTEM_PROMPTS)}, got {family!r}")
    if str(source) == "champ":
        from ..champ import champ_benchmark
        rows, name = ((f"champ: problem {i}", r) for i, r in enumerate(champ_benchmark(), start=1)), "champ"
    else:
        rows, name = _rows(str(source)), Path(source).name.split(".")[0]
    excluded = set(map(str, exclude))
    items, seen = [], {}
    for position, (where, row) in enumerate(rows, start=1):
        item = parse_item(where, row, position, name, family)
        key = (item.benchmark, item.problem_id)
        if key in seen:
            raise ValueError(f"{where}: problem_id: duplicate of {seen[key]} ({item.benchmark}, {item.problem_id})")
        seen[key] = where
        if item.problem_id not in excluded:
            items.append(item)
    if not items:
        raise ValueError(f"{source}: no problems to evaluate" + (" (all excluded)" if excluded else ""))
    return items
