"""Re-scoring the pool with the live model during training, and handing the new weights to the dataset."""
from __future__ import annotations

import os
import time
from typing import Iterable, Optional

import numpy as np
import torch.distributed as dist
from transformers import TrainerCallback

from .. import chat
from ..scoring import score
from ..select import select
from .data import WeightedSFTDataset


class LarkScorer:
    """Scores a pool with the live model and selects again (``lark_fast.score`` + ``lark_fast.select``).

    ``pool``: a path or a list of pool records (docs/method.md §7). ``select_options`` go to ``select`` (e.g.
    ``method="chi2", tau=...``), ``score_options`` to ``score`` (``max_length``,
    ``max_tokens_per_batch``, ...). Each call returns ``(table, weights)`` aligned with the pool and
    appends a summary to ``history``. The model's train/eval mode is restored afterwards.
    """

    def __init__(self, tokenizer, pool, *, B: int = 3, select_options: Optional[dict] = None, **score_options):
        self.tokenizer = tokenizer
        self.pool = pool if isinstance(pool, (str, os.PathLike)) else list(pool)
        self.B = B
        self.select_options = dict(select_options or {})
        self.score_options = {"progress": False, "topk": 0, **score_options}
        self.history: list = []

    def __call__(self, model, step: Optional[int] = None) -> tuple:
        t0 = time.perf_counter()
        table = score(model, self.tokenizer, self.pool, **self.score_options)
        weights = select(table, B=self.B, **self.select_options)
        ok = table["status"] == chat.OK
        self.history.append({"step": step, "seconds": time.perf_counter() - t0, "selected": int((weights > 0).sum()),
                             "mean_L": float(np.mean(table["L"][ok])) if ok.any() else float("nan")})
        return table, weights

    @staticmethod
    def keys(table) -> list:
        return list(zip(table["problem_id"].tolist(), table["candidate_id"].tolist()))


class AnchorRefreshCallback(TrainerCallback):
    """Re-scores the pool with the live model at chosen optimizer steps and gives the new weights to
    the training dataset (a ``WeightedSFTDataset`` over the same pool). ``every``: each multiple of it;
    ``steps``: explicit steps. Under DDP process 0 scores and broadcasts the weights."""

    def __init__(self, scorer: LarkScorer, dataset: WeightedSFTDataset, *, every: Optional[int] = None,
                 steps: Iterable[int] = ()):
        if every is not None and every < 1:
            raise ValueError(f"every: expected a positive number of steps, got {every}")
        self.scorer, self.dataset, self.every, self.steps = scorer, dataset, every, set(steps)
        if self.every is None and not self.steps:
            raise ValueError("every / steps: name at least one refresh step")

    def due(self, step: int) -> bool:
        return step in self.steps or (self.every is not None and step > 0 and step % self.every == 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.due(state.global_step):
            return
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        scored_here = world == 1 or state.is_world_process_zero
        payload = [None]
        if scored_here:
            table, weights = self.scorer(model, step=state.global_step)
            payload = [(weights, LarkScorer.keys(table))]
        if world > 1:
            dist.broadcast_object_list(payload, src=0)
        changed = self.dataset.set_weights(*payload[0])
        if scored_here:
            self.scorer.history[-1]["changed"] = changed
