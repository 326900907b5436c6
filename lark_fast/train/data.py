"""Training data: validated training sets and a dataset of tokenised weighted trajectories."""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .. import chat
from ..pool import PoolReader, RecordError, parse_record


def _rows(source) -> Iterable[tuple]:
    """(position, row) of a .jsonl/.jsonl.gz/.parquet path or of an iterable of mappings (a list,
    a ``datasets.Dataset`` as TRL uses them)."""
    if isinstance(source, (str, os.PathLike)):
        reader = PoolReader(source)
        for line, obj in reader.rows():
            if isinstance(obj, RecordError):
                raise ValueError(f"{reader.name}:{line}: {obj.reason}")
            yield f"{reader.name}:{line}", obj
    else:
        for i, obj in enumerate(source, start=1):
            yield f"record {i}", obj


def read_train_set(source) -> list:
    """Validated records of a training set: ``[{"problem_id", "candidate_id", "teacher", "messages",
    "train_weight"}]``.

    Rows are in the published schema ``{"messages": [...], "meta": {problem_id, candidate_id, teacher,
    score, train_weight}}`` (``write_train_set``'s output, TRL's conversational format) or pool records
    (docs/method.md §7) with a top-level ``train_weight``. Raises ValueError naming the row and field.
    """
    out = []
    for where, row in _rows(source):
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
        meta = row.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValueError(f"{where}: meta: expected an object, got {type(meta).__name__}")
        flat = dict(row) if meta is None else {"messages": row.get("messages"), **dict(meta)}
        flat.setdefault("teacher", "")
        prefix = "meta." if meta is not None else ""
        try:
            rec = parse_record(flat)
        except RecordError as bad:
            name = bad.field if bad.field is None or bad.field.startswith("messages") else prefix + bad.field
            raise ValueError(f"{where}: {name}: {bad.reason}" if name else f"{where}: {bad.reason}") from None
        w = flat.get("train_weight")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{where}: {prefix}train_weight: expected a finite number >= 0, got {w!r}")
        out.append({"problem_id": rec.problem_id, "candidate_id": rec.candidate_id, "teacher": rec.teacher,
                    "messages": rec.messages, "train_weight": float(w)})
    return out


class WeightedSFTDataset(torch.utils.data.Dataset):
    """Tokenised weighted trajectories: chat-template ids and assistant spans (``ChatTokenizer``).

    ``records``: a training set for ``read_train_set`` (path, list, ``datasets.Dataset``), or pool
    records (docs/method.md §7) with ``weights`` aligned to them (e.g. a whole pool with ``select``'s weights,
    for re-scoring during training). ``group_by_problem``: an item is a problem with all its
    trajectories (the default; the batch size then counts problems), else one trajectory.
    Records the template cannot score are left out with a warning and listed in ``skipped``;
    trajectories longer than ``max_length`` are truncated and counted in ``n_truncated``.

    Weights live in a shared-memory tensor: ``set_weights`` takes effect in every batch collated
    afterwards, DataLoader workers included; a weight of 0 drops the trajectory from its batch.
    """

    def __init__(self, records, tokenizer, *, weights: Optional[Sequence[float]] = None,
                 max_length: Optional[int] = None, group_by_problem: bool = True,
                 chat_template: Optional[str] = None):
        if weights is None:
            rows = read_train_set(records)
        else:
            rows = [{"problem_id": r.problem_id, "candidate_id": r.candidate_id, "teacher": r.teacher,
                     "messages": r.messages} for r in PoolReader(records, on_error="fail")]
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(rows),):
                raise ValueError(f"weights: expected {len(rows)} values (one per record), got shape {weights.shape}")
            for r, w in zip(rows, weights):
                r["train_weight"] = float(w)
        tok = chat.ChatTokenizer(tokenizer, max_length=max_length, chat_template=chat_template)
        self.input_ids, self.starts, self.keys, problem_of, w = [], [], [], [], []
        self.skipped, self.n_truncated = [], 0
        problems: dict = {}
        for r in rows:
            t = tok(r["messages"])
            if t.status != chat.OK:
                self.skipped.append({"problem_id": r["problem_id"], "candidate_id": r["candidate_id"],
                                     "status": t.status, "reason": t.reason})
                continue
            self.n_truncated += t.truncated
            self.input_ids.append(t.input_ids)
            self.starts.append(t.start)
            self.keys.append((r["problem_id"], r["candidate_id"]))
            problem_of.append(problems.setdefault(r["problem_id"], len(problems)))
            w.append(r["train_weight"])
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} records cannot be trained on (first: {self.skipped[0]}); "
                          "see dataset.skipped")
        if not self.input_ids:
            raise ValueError("records: no trainable trajectory")
        self.problem_ids = list(problems)
        self.problem_of = np.asarray(problem_of, dtype=np.int64)
        self.weights = torch.tensor(w, dtype=torch.float64).share_memory_()
        self.group_by_problem = group_by_problem
        if group_by_problem:
            self.items = [[] for _ in problems]
            for i, p in enumerate(problem_of):
                self.items[p].append(i)
        else:
            self.items = [[i] for i in range(len(problem_of))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        idx = self.items[i]
        return {"input_ids": [self.input_ids[j] for j in idx], "start": [self.starts[j] for j in idx],
                "weight": self.weights[idx].tolist(), "problem": [int(self.problem_of[j]) for j in idx]}

    def set_weights(self, weights: Sequence[float], keys: Optional[Sequence[tuple]] = None) -> int:
        """Replaces the weights in place; with ``keys`` ((problem_id, candidate_id) per weight) they are
        matched by key and trajectories without one get 0. Returns how many weights changed."""
        w = np.asarray(weights, dtype=np.float64)
        if keys is not None:
            if len(keys) != len(w):
                raise ValueError(f"keys: {len(keys)} keys for {len(w)} weights")
            by_key = dict(zip(map(tuple, keys), w))
            w = np.array([by_key.get(k, 0.0) for k in self.keys])
        if w.shape != (len(self.keys),):
            raise ValueError(f"weights: expected {len(self.keys)} values, got shape {w.shape}")
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("weights: expected finite numbers >= 0")
        new = torch.from_numpy(w)
        changed = int((new != self.weights).sum())
        self.weights.copy_(new)
        return changed
