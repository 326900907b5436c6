"""``lark-fast diagnose utility``: does a selection score predict how much a trajectory helps the
student? (docs/method.md §10.4)

For each candidate of a sample of problems, starting every time from the same student: take
``steps`` SGD steps (fixed learning rate, no momentum) on that candidate alone, measure how much the
held-out loss fell (its *utility*), restore the weights bit for bit. Then, within each problem, the
Spearman correlation of every selection proxy (oriented so that higher = predicted better) with the
measured utility, averaged over problems, with a bootstrap interval over problems.
"""
from __future__ import annotations

import textwrap
import time
from typing import Optional

import numpy as np
import torch

from ..chat import OK, ChatTokenizer
from ..head import LMHead, hidden_before_head
from ..methods import METHODS, ranking_score
from ..rank_correlation import bootstrap_interval, spearman_per_problem
from ..row_checkpoint import RowCheckpoint, content_digest
from ..select import as_table
from ..train import weighted_sft_loss
from .heldout import HeldOutLoss
from .proxies import proxy_columns
from .snapshot import WeightSnapshot, weights_fingerprint


def candidate_loss(model, head: LMHead, tokenized) -> torch.Tensor:
    """The mean token nll of a trajectory's assistant span (``chat.Tokenized``), with its graph."""
    ids = torch.tensor([tokenized.input_ids], device=head.weight.device)
    hidden = hidden_before_head(model, head, ids)[0, :-1]  # position t - 1 predicts token t
    targets = ids[0, 1:].clone()
    targets[: tokenized.start - 1] = -100
    return weighted_sft_loss(hidden, head.weight, targets, None, tokenized.n_scored, bias=head.bias,
                             logit_scale=head.logit_scale, softcap=head.softcap)


def sample_problems(scores, n: int, seed: int) -> list:
    """``n`` problems (drawn with ``seed``, listed in table order) among those with >= 3 scored candidates."""
    table = as_table(scores)
    ok = table["status"] == OK
    counts: dict = {}
    for pid in table["problem_id"][ok]:
        counts[pid] = counts.get(pid, 0) + 1
    eligible = [p for p, c in counts.items() if c >= 3]
    if not eligible:
        raise ValueError("no problem has 3 or more scored candidates; a within-problem correlation needs them")
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(eligible), size=min(n, len(eligible)), replace=False).tolist())
    return [p for i, p in enumerate(eligible) if i in chosen]


def measure_utility(model, tokenizer, records: list, scores, heldout: list, *, problems: list, steps: int = 1,
                    lr: float = 1e-3, max_length: Optional[int] = None, max_tokens_per_batch: Optional[int] = None,
                    seed: int = 0, run_dir=None, overwrite: bool = False, progress: bool = True) -> dict:
    """The utility of every scored candidate of ``problems`` (ids of pool ``records``, dicts as in
    docs/method.md §7): held-out loss before minus after ``steps`` SGD steps of learning rate ``lr``
    on that candidate alone, from the same weights each time (restored exactly afterwards; the model is
    in eval mode throughout, so no dropout). With ``run_dir``, finished candidates are checkpointed
    and a rerun with the same settings resumes. Returns ``{"candidates": [rows], "heldout_before",
    "seconds"}``; a row holds problem_id, candidate_id, teacher, n_tokens, loss_before (the candidate's
    own loss), heldout_after, utility."""
    if steps < 1 or not lr > 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    table = as_table(scores)
    wanted = set(problems)
    scored = {(p, c) for p, c, s in zip(table["problem_id"], table["candidate_id"], table["status"])
              if s == OK and p in wanted}
    todo = [r for r in records if (r["problem_id"], r["candidate_id"]) in scored]
    if not todo:
        raise ValueError("no scored candidate of the chosen problems is in the pool; were the scores made from it?")
    head = LMHead.from_model(model)
    fingerprint = {"candidates": content_digest([[r["problem_id"], r["candidate_id"], r["messages"]] for r in todo]),
                   "heldout": content_digest([[r["problem_id"], r["candidate_id"]] for r in heldout]), "steps": steps,
                   "lr": lr, "max_length": max_length, "seed": seed,
                   "model": weights_fingerprint(model)}
    store = RowCheckpoint(run_dir, fingerprint, overwrite=overwrite) if run_dir is not None else None
    rows = store.load() if store is not None else []
    done = {(r["problem_id"], r["candidate_id"]) for r in rows}
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    heldout_loss = HeldOutLoss(tokenizer, heldout, max_length=max_length, max_tokens_per_batch=max_tokens_per_batch)
    t0 = time.perf_counter()
    before = heldout_loss(model)
    chat = ChatTokenizer(tokenizer, max_length=max_length or getattr(model.config, "max_position_embeddings", None))
    snapshot = WeightSnapshot(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    from tqdm.auto import tqdm
    bar = tqdm(total=len(todo), initial=len(done), unit="candidate", desc="utility", disable=not progress)
    try:
        for r in todo:
            if (r["problem_id"], r["candidate_id"]) in done:
                continue
            tokenized = chat(r["messages"])
            if tokenized.status != OK:
                raise ValueError(f"{r['problem_id']} {r['candidate_id']}: {tokenized.status} ({tokenized.reason}); "
                                 "was the score table made with another --max-length or chat template?")
            losses = []
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = candidate_loss(model, head, tokenized)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            after = heldout_loss(model)
            snapshot.restore()
            row = {"problem_id": r["problem_id"], "candidate_id": r["candidate_id"], "teacher": r["teacher"],
                   "n_tokens": tokenized.n_scored, "loss_before": losses[0], "heldout_after": after,
                   "utility": before - after}
            if store is not None:
                store.write_part([row])
            rows.append(row)
            bar.update(1)
    finally:
        snapshot.restore()
        model.train(was_training)
        bar.close()
    return {"candidates": rows, "heldout_before": before, "seconds": time.perf_counter() - t0}


def proxy_correlations(candidates: list, scores, *, resamples: int = 1000, seed: int = 0) -> list:
    """Per selection proxy whose column the score table has (``random`` is always added): the mean over
    problems of the within-problem Spearman correlation between the proxy, oriented so that higher =
    predicted better, and the measured utility; its bootstrap interval over problems (95%); the number
    of problems and how many of them correlate positively."""
    table = as_table(scores)
    columns = proxy_columns(table)
    measured = {(c["problem_id"], c["candidate_id"]): c["utility"] for c in candidates}
    utility = np.array([measured.get(k, np.nan) for k in zip(table["problem_id"], table["candidate_id"])])
    out = []
    for name, m in METHODS.items():
        if m.column not in columns:
            continue
        _, values = spearman_per_problem(table["problem_id"], ranking_score(columns, name), utility)
        low, high = bootstrap_interval(values, resamples=resamples, seed=seed)
        out.append({"proxy": name, "column": m.column, "better": "higher" if m.direction > 0 else "lower",
                    "spearman": float(values.mean()) if len(values) else float("nan"), "ci_low": low,
                    "ci_high": high, "problems": len(values), "positive_problems": int((values > 0).sum())})
    return out


def plot_correlations(rows: list, path, title: str) -> None:
    from ..plotting import pyplot
    plt = pyplot(str(path))
    if plt is None:
        return
    rows = [r for r in rows if np.isfinite(r["spearman"])]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    mean = np.array([r["spearman"] for r in rows])
    err = np.array([[r["spearman"] - r["ci_low"], r["ci_high"] - r["spearman"]] for r in rows]).T
    ax.barh(y, mean, xerr=err, capsize=3, color=["#c44e52" if r["proxy"] == "lark" else "#4c72b0" for r in rows])
    ax.set_yticks(y, [f"{r['proxy']} ({r['column']}, {r['better']})" for r in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Spearman with measured utility within problems\n(mean over problems, 95% bootstrap interval)")
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
