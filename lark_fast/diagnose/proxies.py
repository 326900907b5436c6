"""The selection proxies a diagnostic compares, as columns."""
from __future__ import annotations

from ..methods import random_scores
from ..select import as_table


def proxy_columns(scores) -> dict:
    """The score table's columns, with the ``random`` proxy (the null baseline) added when it is missing."""
    table = as_table(scores)
    columns = {c: table[c] for c in table.column_names}
    if "random" not in columns:
        columns["random"] = random_scores(table["problem_id"], table["candidate_id"])
    return columns
