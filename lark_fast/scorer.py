"""Scoring: the student runs to the input of its LM head, then the fused statistics op does the rest.

The model is never asked for logits: a pre-hook on its output embeddings captures the LM head's
input and stops the forward there. Logits are z = softcap(logit_scale * (W h + b)) with W, b the
output embeddings and the scale / soft-cap the architecture applies after them (Gemma's
``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``logits_scaling``); the first
batch checks this against the model's own logits, so an architecture with another head fails loudly
instead of scoring wrong.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np
import torch

from . import chat, ops
from .pool import PoolReader
from .scores import lark_energy, trajectory_scores
from .table import ScoreTable

SORT_WINDOW = 32  # batches' worth of records sorted by length together to limit padding


@dataclass
class LMHead:
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    logit_scale: float
    softcap: Optional[float]
    module: torch.nn.Module

    @classmethod
    def from_model(cls, model) -> "LMHead":
        module = model.get_output_embeddings()
        if module is None or getattr(module, "weight", None) is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings with a weight; "
                             "lark_fast needs a causal LM with an LM head")
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        scale = 1.0
        if getattr(cfg, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
            scale *= float(cfg.logit_scale)
        if getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
            scale /= float(cfg.logits_scaling)
        softcap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3: c tanh(z / c)
        return cls(module.weight, getattr(module, "bias", None), scale, float(softcap) if softcap else None, module)

    def stats(self, hidden, targets, cu_seqlens=None, topk=0) -> ops.LMHeadStats:
        return ops.lm_head_stats(hidden, self.weight, targets, bias=self.bias, logit_scale=self.logit_scale,
                                 softcap=self.softcap, cu_seqlens=cu_seqlens, topk=topk)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Materialised logits, fp32; only for checking a handful of positions."""
        z = hidden.float() @ self.weight.float().T
        if self.bias is not None:
            z = z + self.bias.float()
        z = z * self.logit_scale
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)


class _HeadInput(Exception):
    def __init__(self, hidden):
        super().__init__("LM head input captured")
        self.hidden = hidden


def hidden_before_head(model, head: LMHead, input_ids, attention_mask) -> torch.Tensor:
    """The LM head's input [B, T, d] for a batch, without computing any logits."""
    def stop(_module, args):
        raise _HeadInput(args[0])

    handle = head.module.register_forward_pre_hook(stop)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _HeadInput as captured:
        return captured.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"{type(model).__name__} finished its forward without calling its output embeddings")


def verify_lm_head(model, head: LMHead, input_ids: torch.Tensor) -> None:
    """Compares the head's logits with the model's own on a short sequence; raises if they differ."""
    ids = input_ids[:, :16]
    mask = torch.ones_like(ids)
    hidden = hidden_before_head(model, head, ids, mask)
    ours = head.logits(hidden)
    theirs = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    if ours.shape != theirs.shape:
        raise RuntimeError(f"{type(model).__name__}: the model's logits have shape {tuple(theirs.shape)}, "
                           f"its output embeddings give {tuple(ours.shape)}; unsupported LM head")
    err = (ours - theirs).abs().max().item()
    tol = (1e-3 if hidden.dtype == torch.float32 else 5e-2) * max(1.0, theirs.abs().max().item())
    if not err <= tol:
        raise RuntimeError(f"{type(model).__name__}: logits from its output embeddings differ from the model's "
                           f"own by {err:.3g} (tolerance {tol:.3g}); the architecture transforms logits in a way "
                           "lark_fast does not know (scale/soft-cap), so its scores would be wrong")


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Scorer:
    """Scores batches of tokenised records with one model; reusable across pools."""

    def __init__(self, model, tokenizer, *, max_length: Optional[int] = None, topk: int = 50,
                 chat_template: Optional[str] = None, verify_head: bool = True):
        self.model = model
        self.head = LMHead.from_model(model)
        if max_length is None:
            max_length = getattr(model.config.get_text_config() if hasattr(model.config, "get_text_config")
                                 else model.config, "max_position_embeddings", None)
        self.chat = chat.ChatTokenizer(tokenizer, max_length=max_length, chat_template=chat_template)
        self.topk = topk
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = self.head.weight.device
        self._head_verified = not verify_head

    def score_batch(self, items: list) -> dict:
        """Per-record float64 sums (``n_tokens, nll, brier, entropy, rank_clipped, brier_topk``) for
        a list of ``Tokenized`` records with status ok."""
        lengths = [len(t.input_ids) for t in items]
        ids = torch.full((len(items), max(lengths)), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(items):
            ids[i, : lengths[i]] = torch.tensor(t.input_ids)
            mask[i, : lengths[i]] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode(), _eval_mode(self.model):
            if not self._head_verified:
                verify_lm_head(self.model, self.head, ids[:1, : lengths[0]])
                self._head_verified = True
            hidden = hidden_before_head(self.model, self.head, ids, mask)
            # token t of a record is predicted from position t - 1: rows (i, start-1 .. len-2)
            rows = torch.cat([torch.full((n - t.start,), i) for i, (t, n) in enumerate(zip(items, lengths))])
            cols = torch.cat([torch.arange(t.start - 1, n - 1) for t, n in zip(items, lengths)])
            rows, cols = rows.to(self.device), cols.to(self.device)
            counts = torch.tensor([0] + [n - t.start for t, n in zip(items, lengths)])
            cu_seqlens = counts.cumsum(0).to(device=self.device, dtype=torch.int32)
            stats = self.head.stats(hidden[rows, cols], ids[rows, cols + 1], cu_seqlens, self.topk)
        seg = stats.segments
        out = {name: getattr(seg, name).cpu().numpy() for name in ("n_tokens", "nll", "brier", "entropy", "rank_clipped")}
        out["brier_topk"] = seg.brier_topk.cpu().numpy() if seg.brier_topk is not None else None
        return out


def score(model, tokenizer, records: Union[str, Iterable[dict]], *, max_length: Optional[int] = None,
          batch_size: int = 8, topk: int = 50, on_error: str = "skip", chat_template: Optional[str] = None,
          progress: bool = True, verify_head: bool = True) -> ScoreTable:
    """Scores every record of a pool with the student ``model`` (SPEC §3).

    ``records``: a ``.jsonl``/``.parquet`` path or an iterable of dicts (SPEC §7). Returns one row
    per record read, in input order, with columns ``problem_id, candidate_id, teacher, n_tokens,
    truncated, status, L, brier, rho, g_hat, entropy, rsr, brier_top{topk}, reason``. Records that
    cannot be read are in ``table.issues``; read but unscorable ones have a status other than
    ``ok`` and NaN scores. ``max_length`` (default: the model's context) truncates, flagged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    scorer = Scorer(model, tokenizer, max_length=max_length, topk=topk, chat_template=chat_template,
                    verify_head=verify_head)
    reader = PoolReader(records, on_error=on_error)
    meta = {k: [] for k in ("problem_id", "candidate_id", "teacher", "truncated", "status", "reason")}
    sums: dict = {}
    pending: list = []  # (row index, Tokenized)
    n_scored_tokens = 0
    t0 = time.perf_counter()

    from tqdm.auto import tqdm
    bar = tqdm(total=reader.count(), unit="rec", desc="scoring", disable=not progress, dynamic_ncols=True)

    def flush(items):
        nonlocal n_scored_tokens
        items = sorted(items, key=lambda it: -len(it[1].input_ids))
        for b in range(0, len(items), batch_size):
            batch = items[b: b + batch_size]
            out = scorer.score_batch([t for _, t in batch])
            for j, (row, _) in enumerate(batch):
                sums[row] = {k: (None if v is None else v[j]) for k, v in out.items()}
            n_scored_tokens += int(out["n_tokens"].sum())
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_scored_tokens / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)

    for rec in reader:
        row = len(meta["status"])
        tok = scorer.chat(rec.messages)
        for k, v in (("problem_id", rec.problem_id), ("candidate_id", rec.candidate_id), ("teacher", rec.teacher),
                     ("truncated", tok.truncated), ("status", tok.status), ("reason", tok.reason)):
            meta[k].append(v)
        if tok.status != chat.OK:
            bar.update(1)
            continue
        pending.append((row, tok))
        if len(pending) >= batch_size * SORT_WINDOW:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    bar.close()
    seconds = time.perf_counter() - t0

    n = len(meta["status"])
    cols = {k: np.zeros(n) for k in ("nll", "brier", "entropy", "rank_clipped", "brier_topk")}
    n_tokens = np.zeros(n, dtype=np.int64)
    for row, s in sums.items():
        n_tokens[row] = s["n_tokens"]
        for k in cols:
            cols[k][row] = np.nan if s[k] is None else s[k]
    per = trajectory_scores(n_tokens, cols["nll"], cols["brier"], cols["entropy"], cols["rank_clipped"],
                            cols["brier_topk"] if topk else None)
    status = np.array(meta["status"], dtype=object)
    reason = np.array(meta["reason"], dtype=object)
    scored = status == chat.OK
    finite = np.all([np.isfinite(per[k]) for k in ("L", "brier", "entropy")], axis=0) if n else np.ones(0, bool)
    bad = scored & ~finite
    status[bad] = chat.NONFINITE
    reason[bad] = "the student produced non-finite statistics (NaN/inf hidden states or logits)"
    ok = status == chat.OK
    for k in per:
        per[k] = np.where(ok, per[k], np.nan)
    n_tokens = np.where(ok, n_tokens, 0)

    columns = {
        "problem_id": meta["problem_id"], "candidate_id": meta["candidate_id"], "teacher": meta["teacher"],
        "n_tokens": n_tokens, "truncated": np.array(meta["truncated"], dtype=bool), "status": status,
        "L": per["L"], "brier": per["brier"], "rho": per["rho"],
        "g_hat": lark_energy(meta["problem_id"], per["L"], per["brier"], ok),
        "entropy": per["entropy"], "rsr": per["rsr"],
    }
    if topk:
        columns[f"brier_top{topk}"] = per["brier_topk"]
    columns["reason"] = reason
    info = {"seconds": seconds, "scored_tokens": int(n_tokens.sum()), "records_read": n,
            "max_length": scorer.chat.max_length, "topk": topk, "batch_size": batch_size,
            "model": type(model).__name__}
    return ScoreTable(columns, issues=reader.issues, info=info)
