"""The CHAMP competition-math pool (package ``champ-dataset``, read from its JSON file): per problem,
every teacher's answers (GPT-3.5, GPT-4, GPT-4 Turbo, PaLM 2 Medium) under chosen prompt settings, as
pool records (docs/method.md §7). A natural multi-teacher candidate pool for the demo, the tests and
the benchmarks; its gold answers make a ready benchmark for held-out problems (``lark-fast eval``)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path


def champ_path() -> Path:
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the demo needs champ-dataset: pip install --no-deps champ-dataset==1.0.0")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_files" / "v0.json"


def champ_pool(n_problems: int, settings: list) -> list:
    """Pool records from CHAMP: per problem, every teacher's first answer under each prompt
    setting, all paired with the problem's plain (0-Shot) system and user turns, so the candidates
    of a problem differ only in the trajectory.

    Problems are taken round-robin over categories in file order, so a dozen spans several topics.
    Answers that are missing or errored are left out.
    """
    problems = json.loads(champ_path().read_text(encoding="utf-8"))["problems"]
    by_category: dict = {}
    for p in problems.values():
        by_category.setdefault(p["category"], []).append(p)
    chosen, queues = [], [list(v) for v in by_category.values()]
    while len(chosen) < n_problems and any(queues):
        for q in queues:
            if q and len(chosen) < n_problems:
                chosen.append(q.pop(0))
    records = []
    for p in chosen:
        plain = next(c["messages"] for k, c in p["conversations"].items() if k.endswith("|0-Shot"))
        prompt = [{"role": m["role"].lower(), "content": m["text"]} for m in plain[:2]]
        for key, conv in p["conversations"].items():
            teacher, setting = key.split("|", 1)
            if setting not in settings:
                continue
            answer = next((m for m in conv["messages"] if m["role"].startswith("Model.")), None)
            if answer is None or answer["error"] or not answer["text"].strip():
                continue
            records.append({"problem_id": p["identifier"], "candidate_id": key, "teacher": teacher,
                            "messages": prompt + [{"role": "assistant", "content": answer["text"]}]})
    return records


def champ_answers(raw_answer: str, answer: str) -> list:
    """The acceptable final answers of a CHAMP problem. Its raw answer marks the mathematical part
    with ``@@...@@``: two marked forms joined by "or equivalently" are alternatives, one marked form is
    the answer, several others together make one answer (the plain text). Unmarked answers that lead
    with a number ("100 (i.e., all values)", "0 is the only possible value") give the number."""
    marked = re.findall(r"@@(.*?)@@", raw_answer)
    if len(marked) > 1 and "equivalent" in raw_answer:
        return marked
    if len(marked) == 1:
        return marked
    leading = re.match(r"^(-?\d+) (\(|is the only)", answer)
    return [leading.group(1)] if leading else [answer]


def champ_benchmark() -> list:
    """CHAMP's problems with their gold answers, as benchmark rows (``lark_fast.eval.benchmark``):
    ``{"problem_id", "problem", "answer": [acceptable forms], "benchmark": "champ"}``, in file order."""
    problems = json.loads(champ_path().read_text(encoding="utf-8"))["problems"]
    return [{"problem_id": p["identifier"], "problem": p["_text"], "benchmark": "champ",
             "answer": champ_answers(p["_raw_answer"], p["_answer"])} for p in problems.values()]
