"""lark_fast: exact, fast LARK selection of teacher reasoning trajectories for student distillation.

    table = lark_fast.score(model, tokenizer, "pool.jsonl")   # per-trajectory scores (ScoreTable)
    weights = lark_fast.select(table, B=3)                    # per-trajectory weights
"""
__version__ = "0.1.0"

from . import ops, solver  # noqa: E402
from .pool import PoolError, PoolIssue  # noqa: E402
from .scoring import score  # noqa: E402
from .select import select  # noqa: E402
from .table import ScoreTable  # noqa: E402

__all__ = ["score", "select", "ScoreTable", "PoolError", "PoolIssue", "ops", "solver", "__version__"]
