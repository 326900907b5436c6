"""Packing weighted trajectories into one row per micro-batch."""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")


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
