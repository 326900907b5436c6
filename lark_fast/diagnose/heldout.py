"""The held-out loss the diagnostics measure training utility with (docs/method.md §10.4)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..chat import OK


class HeldOutLoss:
    """``heldout(model)``: the mean over the held-out trajectories of their mean token nll (L of
    docs/method.md §3.3), scored with ``lark_fast.score`` (packed, no logits in memory; the model's
    train/eval mode is kept). Trajectories the template cannot score are left out, once for all."""

    def __init__(self, tokenizer, records: list, *, max_length: Optional[int] = None,
                 max_tokens_per_batch: Optional[int] = None):
        if not records:
            raise ValueError("held-out set: no trajectories")
        self.tokenizer, self.records = tokenizer, list(records)
        self.options = dict(max_length=max_length, max_tokens_per_batch=max_tokens_per_batch, topk=0,
                            progress=False)

    def __call__(self, model) -> float:
        from ..scoring import score
        table = score(model, self.tokenizer, self.records, **self.options)
        ok = table["status"] == OK
        if not ok.any():
            raise ValueError("held-out set: no trajectory can be scored (statuses: "
                             f"{', '.join(sorted(set(table['status'].tolist())))})")
        return float(np.mean(table["L"][ok]))


def heldout_problems(problem_ids: list, n: int, seed: int) -> set:
    """``n`` of the problems, drawn with ``seed``."""
    unique = list(dict.fromkeys(problem_ids))
    if not 0 < n < len(unique):
        raise ValueError(f"held-out problems: need 0 < n < {len(unique)} (the pool's problems), got {n}")
    rng = np.random.default_rng(seed)
    return {unique[i] for i in rng.choice(len(unique), size=n, replace=False)}
