"""Evaluating a student on benchmarks (docs/method.md §10): sample k completions per problem, grade
their last boxed answer, report ACC@k and pass@k per benchmark and label.

    items = read_benchmark("champ", exclude=pool_problem_ids)      # or a .jsonl / .json / .parquet file
    generate("path/to/student", items, "samples.jsonl", label="lark", k=5)
    grade_file("samples.jsonl", "graded.jsonl")
    write_report(["graded.jsonl", ...], "report/")
"""
from .benchmark import SYSTEM_PROMPTS, BenchmarkItem, read_benchmark
from .extract import boxed_answers, last_boxed
from .generation import generate
from .grade import Grader, grade_file
from .normalize import exact_match, normalize_answer
from .report import pass_at_k, summarize, write_report

__all__ = ["read_benchmark", "BenchmarkItem", "SYSTEM_PROMPTS", "generate", "grade_file", "Grader", "last_boxed",
           "boxed_answers", "exact_match", "normalize_answer", "pass_at_k", "summarize", "write_report"]
