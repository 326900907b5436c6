"""The published LARK scorer's algorithm, reproduced faithfully as a baseline for benchmarks and for
comparing numbers: one trajectory per forward, the model's full fp32 logits for every position,
log-softmax nll and the top-50 renormalised Brier (docs/method.md §8 lists what lark_fast does instead)."""
from __future__ import annotations

import numpy as np
import torch

from .chat import ChatTokenizer


def reference_pass(model, seqs) -> dict:
    """The published scorer, faithfully: one trajectory per forward, the model's full fp32 logits for
    every position, log-softmax nll and the top-50 renormalised Brier. ``seqs``: (token ids, first
    scored index) per trajectory. Returns per-trajectory L and Brier."""
    device = model.get_output_embeddings().weight.device
    out = {"L": [], "brier_top50": []}
    with torch.inference_mode():
        for ids, start in seqs:
            ids = torch.tensor([ids], device=device)
            logits = model(input_ids=ids).logits.float()[0]  # [T, V], every position
            z, y = logits[start - 1:-1], ids[0, start:]
            nll = -torch.log_softmax(z, dim=-1).gather(1, y[:, None])[:, 0]
            vals, idx = z.topk(50, dim=-1)
            pk = torch.softmax(vals, dim=-1)
            brier = 1 - 2 * (pk * (idx == y[:, None])).sum(-1) + (pk * pk).sum(-1)
            out["L"].append(float(nll.mean()))
            out["brier_top50"].append(float(brier.mean()))
    return {k: np.array(v) for k, v in out.items()}


def reference_scores(model, tokenizer, records, max_length=None) -> dict:
    """``reference_pass`` over pool records (those with an assistant span to score)."""
    chat = ChatTokenizer(tokenizer, max_length=max_length)
    toks = [chat(r["messages"] if isinstance(r, dict) else r.messages) for r in records]
    return reference_pass(model, [(t.input_ids, t.start) for t in toks if t.n_scored > 0])
