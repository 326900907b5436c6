"""Training with LARK weights (SPEC §6): a fused weighted SFT loss, packed weighted batches, an HF
``Trainer`` whose normaliser is fixed per optimizer step, and re-scoring inside a training loop.

The objective is sum_n sum_k q_nk l_nk / N with a fixed N, where l_nk is the mean token nll of
candidate k of problem n (or, with ``reduction="sum"``, its summed nll). The published trainer
divides by sum q inside each micro-batch, so at batch size 1 the weights cancel; here N never
depends on the weights.

    ds = WeightedSFTDataset("train.jsonl", tokenizer)          # {"messages", "meta": {..., "train_weight"}}
    trainer = WeightedSFTTrainer(model=model, args=TrainingArguments(...), train_dataset=ds)
    trainer.train()

How the normaliser is computed per optimizer step (``normalizer="problems"``): N_step is the number of
distinct problems in all micro-batches of the step, on all processes. Every micro-batch's loss is
sum_t w_t nll_t / N_step, the Trainer adds the micro-batches' gradients without dividing by the
accumulation steps, and each of W data-parallel processes multiplies its loss by W because DDP
averages gradients. The step's gradient is therefore that of sum_{step} w nll / N_step whatever the
split into micro-batches and processes. With ``group_by_problem=True`` a dataset item is a whole
problem, so N_step = per_device_train_batch_size x gradient_accumulation_steps x W. A number instead
of "problems" fixes N_step to that constant.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback

from . import attention, chat
from .kernels.weighted_ce import weighted_ce
from .pool import PoolReader, _Bad, parse_record
from .scorer import LMHead, score, verify_lm_head
from .select import select

__all__ = ["weighted_sft_loss", "read_train_set", "WeightedSFTDataset", "PackedCollator", "WeightedSFTTrainer",
           "LarkScorer", "AnchorRefreshCallback"]

REDUCTIONS = ("mean", "sum")


def weighted_sft_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      token_weights: Optional[torch.Tensor], normalizer, *, bias: Optional[torch.Tensor] = None,
                      cu_seqlens: Optional[torch.Tensor] = None, traj_weights: Optional[torch.Tensor] = None,
                      logit_scale: float = 1.0, softcap: Optional[float] = None, ignore_index: int = -100,
                      backend: str = "auto") -> torch.Tensor:
    """sum_t w_t nll_t / normalizer through the LM head, fp32 scalar, never a [tokens, vocab] tensor.

    hidden [N, d] (the LM head's input; bf16/fp16/fp32, accumulated in fp32), weight [V, d], targets
    [N] (``ignore_index`` = no loss), token_weights [N] or None (1), normalizer > 0 (a number or a
    one-element tensor). With ``cu_seqlens`` [S + 1] and ``traj_weights`` [S], w_t is further multiplied
    by its trajectory's weight. Logits are softcap(logit_scale * (W h + b)) (``LMHead.from_model`` gives
    the model's scale and cap). Gradients flow to hidden, weight and bias; weights are constants.
    Backend: Triton on CUDA, chunked torch elsewhere; both deterministic.
    """
    return weighted_ce(hidden, weight, targets, token_weights, normalizer, bias=bias, logit_scale=logit_scale,
                       softcap=softcap, cu_seqlens=cu_seqlens, traj_weights=traj_weights, ignore_index=ignore_index,
                       backend=backend)


# ---------------------------------------------------------------------------------------------- data

def _rows(source) -> Iterable[tuple]:
    """(position, row) of a .jsonl/.jsonl.gz/.parquet path or of an iterable of mappings (a list,
    a ``datasets.Dataset`` as TRL uses them)."""
    if isinstance(source, (str, os.PathLike)):
        reader = PoolReader(source)
        for line, obj in reader._raw():
            if isinstance(obj, _Bad):
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
    (SPEC §7) with a top-level ``train_weight``. Raises ValueError naming the row and field.
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
        except _Bad as bad:
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
    records (SPEC §7) with ``weights`` aligned to them (e.g. a whole pool with ``select``'s weights,
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


class PackedCollator:
    """Packs a list of dataset items into one row, trajectories back to back.

    Returns ``input_ids``, ``position_ids`` (restarting per trajectory), ``labels`` (the assistant span,
    -100 elsewhere; HF's unshifted convention), ``token_weights`` (aligned with labels), ``cu_seqlens``
    [S + 1] int32 and ``problems`` (the distinct problem indices). With segment-wise attention no
    trajectory attends to another. ``reduction="mean"``: a trajectory's tokens share its weight q
    (w_t = q / n_tokens, so it contributes q times its mean nll); ``"sum"``: w_t = q.
    Trajectories of weight 0 are left out (a batch of only those keeps one, with weight 0).
    """

    def __init__(self, reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def __call__(self, items: list) -> dict:
        trajs = [(ids, s, w, p) for it in items for ids, s, w, p in zip(it["input_ids"], it["start"],
                                                                         it["weight"], it["problem"])]
        kept = [t for t in trajs if t[2] > 0] or trajs[:1]
        ids, labels, weights, positions, lengths = [], [], [], [], []
        for seq, start, w, _ in kept:
            n = len(seq)
            ids.extend(seq)
            labels.extend([-100] * start + list(seq[start:]))
            share = w / (n - start) if self.reduction == "mean" else w
            weights.extend([0.0] * start + [share] * (n - start))
            positions.extend(range(n))
            lengths.append(n)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths).cumsum(0)
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]),
                "labels": torch.tensor([labels]), "token_weights": torch.tensor([weights], dtype=torch.float32),
                "cu_seqlens": cu, "problems": torch.tensor(sorted({t[3] for t in trajs}), dtype=torch.int64)}


# ---------------------------------------------------------------------------------------- HF Trainer

@contextlib.contextmanager
def _head_input(head: LMHead):
    """Captures the LM head's input during a forward and hands the head an empty slice of it, so the
    model computes no logits (and finishes its forward normally, as DDP expects)."""
    box = []

    def hook(_module, args):
        box.append(args[0])
        return (args[0][..., :0, :],) + tuple(args[1:])

    handle = head.module.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


class WeightedSFTTrainer(Trainer):
    """``transformers.Trainer`` with the weighted loss of packed rows (see the module docstring).

    Extra arguments: ``normalizer`` ("problems" or a positive number) and ``loss_backend``
    ("auto", "torch", "triton"). The data collator defaults to ``PackedCollator()``; datasets are
    ``WeightedSFTDataset``s. Data parallelism: DDP (torchrun); FSDP / ZeRO-3 shard the LM head,
    which the fused loss reads directly, and are not supported.
    """

    loss_is_scaled_for_ga = True  # each micro-batch is already divided by its step's normaliser

    def __init__(self, *args, normalizer: Union[str, float] = "problems", loss_backend: str = "auto", **kwargs):
        if not (normalizer == "problems" or (isinstance(normalizer, (int, float))
                                             and not isinstance(normalizer, bool) and 0 < normalizer < math.inf)):
            raise ValueError(f"normalizer: expected 'problems' or a positive number, got {normalizer!r}")
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = PackedCollator()
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("WeightedSFTTrainer: torch.nn.DataParallel (several GPUs in one process) is not "
                             "supported; launch one process per GPU with torchrun (DDP)")
        self.model_accepts_loss_kwargs = False  # the Trainer must not count label tokens
        self.args.remove_unused_columns = False  # items are not model inputs until PackedCollator packs them
        self.normalizer = normalizer
        self.loss_backend = loss_backend
        self.head = LMHead.from_model(self.accelerator.unwrap_model(self.model))
        self._head_verified = False
        self._packed = False

    def step_normalizer(self, batches: list) -> float:
        """N_step for the micro-batches of one optimizer step (all processes agree on it)."""
        if self.normalizer != "problems":
            return float(self.normalizer)
        ids = set()
        for b in batches:
            ids.update(b["problems"].tolist())
        if self.accelerator.num_processes > 1:
            every = [None] * dist.get_world_size()
            dist.all_gather_object(every, ids)
            ids = set().union(*every)
        return float(max(1, len(ids)))

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        return batches, (self.step_normalizer(batches) if batches else None)

    @contextlib.contextmanager
    def packed(self, model, cu_seqlens):
        """Segment-wise attention for the packed row; held through the backward as well, so that
        recomputation under gradient checkpointing sees the same segments."""
        if self._packed:
            yield
            return
        with attention.packed_attention(self.accelerator.unwrap_model(model)), \
                attention.segments(cu_seqlens.tolist()):
            self._packed = True
            try:
                yield
            finally:
                self._packed = False

    def verify_head(self, model, inputs) -> None:
        """Once: the head's logits must equal the model's own on the first trajectory (scorer.verify_lm_head)."""
        if not self._head_verified:
            with torch.no_grad():
                verify_lm_head(self.accelerator.unwrap_model(model), self.head,
                               inputs["input_ids"][:, : int(inputs["cu_seqlens"][1])].to(self.head.weight.device))
            self._head_verified = True

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.verify_head(model, inputs)
        with self.packed(model, inputs["cu_seqlens"]):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.verify_head(model, inputs)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        weights = inputs.pop("token_weights")
        cu = inputs.pop("cu_seqlens")
        problems = inputs.pop("problems")
        if labels.shape[0] != 1:
            raise ValueError("inputs: expected one packed row (PackedCollator), got a batch of "
                             f"{labels.shape[0]} rows")
        normalizer = num_items_in_batch
        if normalizer is None:  # evaluation: this batch alone
            normalizer = float(self.normalizer) if self.normalizer != "problems" else float(max(1, len(problems)))
        with self.packed(model, cu), _head_input(self.head) as box:
            model(**inputs, use_cache=False)
        if len(box) != 1:
            raise RuntimeError(f"the LM head ran {len(box)} times in one forward; unsupported model")
        hidden = box[0][0, :-1]  # position t predicts token t + 1; each segment starts with label -100
        loss = weighted_sft_loss(hidden, self.head.weight, labels[0, 1:], weights[0, 1:], normalizer,
                                 bias=self.head.bias, logit_scale=self.head.logit_scale,
                                 softcap=self.head.softcap, backend=self.loss_backend)
        if model.training and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None



# ------------------------------------------------------------------------------- scoring in the loop

class LarkScorer:
    """Scores a pool with the live model and selects again (``lark_fast.score`` + ``lark_fast.select``).

    ``pool``: a path or a list of pool records (SPEC §7). ``select_options`` go to ``select`` (e.g.
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
