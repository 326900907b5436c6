"""``lark-fast diagnose loss-curves``: weighted SFT on each method's selection, from the same start, with
the training and held-out loss per step (docs/method.md §10.5) — whether LARK's selection is learned
faster on your student and pool.

Arms: ``lark`` (LARK weights: top-B by ĝ, weighted by the margin over the first excluded), ``uniform``
(the same top-B, 1/B each), and any selection proxy of ``lark_fast.methods`` by name, e.g. ``random``,
``rsr``, ``ifd`` (its top-B in its own direction, 1/B each). Every arm trains a copy of the same
weights with ``WeightedSFTTrainer`` (one problem per optimizer step, the same seed and problem order).
"""
from __future__ import annotations

import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..groups import group_offsets
from ..methods import METHODS
from ..row_checkpoint import RowCheckpoint, content_digest
from ..select import select
from .heldout import HeldOutLoss
from .proxies import proxy_columns
from .snapshot import WeightSnapshot, weights_fingerprint

ARMS = ("lark", "uniform", "random", "rsr", "ifd")


def arm_weights(scores, arm: str, B: int) -> np.ndarray:
    """Training weights of one arm, aligned with the score table's rows (see the module docstring)."""
    if arm != "uniform" and arm not in METHODS:
        raise ValueError(f"arm {arm!r}: expected lark, uniform or a selection method ({', '.join(METHODS)})")
    columns = proxy_columns(scores)
    weights = select(columns, B=B, by="lark" if arm == "uniform" else arm)
    if arm == "lark":
        return weights
    out = np.zeros(len(weights))
    order, offsets = group_offsets(columns["problem_id"])
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        chosen = order[lo:hi][weights[order[lo:hi]] > 0]
        out[chosen] = 1.0 / max(len(chosen), 1)
    return out


def loss_curves(model, tokenizer, train: list, scores, heldout: list, *, arms=ARMS, B: int = 3, steps: int = 8,
                lr: float = 5e-5, optim: str = "adamw_torch", eval_every: int = 2, max_length: Optional[int] = None,
                max_tokens_per_batch: Optional[int] = None, seed: int = 0, run_dir=None, overwrite: bool = False,
                save_models=None, progress: bool = True) -> dict:
    """Trains each arm for ``steps`` optimizer steps on the ``train`` pool records (weighted by the arm's
    selection from ``scores``), from the model's current weights each time; the held-out loss
    (``HeldOutLoss`` of ``heldout``) every ``eval_every`` steps and at the last. The model's weights are
    restored afterwards; ``save_models=DIR`` keeps each arm's final student in DIR/<arm>. With
    ``run_dir``, finished arms are checkpointed and a rerun resumes. Returns ``{"rows": [{arm, step,
    train_loss, heldout_loss}], "selected": {arm: trajectories with weight > 0}, "seconds": {arm: s}}``."""
    from transformers import PrinterCallback, TrainerCallback, TrainingArguments

    from ..train import LarkScorer, WeightedSFTDataset, WeightedSFTTrainer

    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got {steps}, {eval_every}")
    columns = proxy_columns(scores)
    in_train = {(r["problem_id"], r["candidate_id"]) for r in train}
    rows_in_train = np.array([k in in_train for k in zip(columns["problem_id"], columns["candidate_id"])], dtype=bool)
    columns = {c: v[rows_in_train] for c, v in columns.items()}
    weights = {arm: arm_weights(columns, arm, B) for arm in arms}
    keys = LarkScorer.keys(columns)
    dataset = WeightedSFTDataset(train, tokenizer, weights=np.zeros(len(train)), max_length=max_length)
    heldout_loss = HeldOutLoss(tokenizer, heldout, max_length=max_length, max_tokens_per_batch=max_tokens_per_batch)
    fingerprint = {"train": content_digest([[r["problem_id"], r["candidate_id"]] for r in train]),
                   "heldout": content_digest([[r["problem_id"], r["candidate_id"]] for r in heldout]), "B": B,
                   "steps": steps, "lr": lr, "optim": optim, "eval_every": eval_every, "max_length": max_length,
                   "seed": seed, "model": weights_fingerprint(model)}
    selection = {a: content_digest(np.round(w, 12).tolist()) for a, w in weights.items()}
    store = RowCheckpoint(run_dir, fingerprint, overwrite=overwrite) if run_dir is not None else None
    # an arm is done when it was trained on the same selection (a rerun may ask for other arms)
    rows = [r for r in (store.load() if store is not None else []) if selection.get(r["arm"]) == r["selection"]]
    done = {r["arm"] for r in rows}
    start = heldout_loss(model)
    snapshot = WeightSnapshot(model)
    was_training = model.training
    use_cpu = model.get_input_embeddings().weight.device.type == "cpu"
    seconds, history = {}, {}
    from tqdm.auto import tqdm
    bar = tqdm(total=steps * len(arms), initial=steps * len(done & set(arms)), unit="step", desc="loss curves",
               disable=not progress)

    class HeldOut(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % eval_every == 0 or state.global_step == state.max_steps:
                history[state.global_step] = heldout_loss(model)
            bar.update(1)

    try:
        with tempfile.TemporaryDirectory(prefix="lark_loss_curves_") as tmp:
            for arm in arms:
                if arm in done:
                    continue
                snapshot.restore()
                dataset.set_weights(weights[arm], keys=keys)
                history.clear()
                targs = TrainingArguments(output_dir=str(Path(tmp) / arm), max_steps=steps,
                                          per_device_train_batch_size=1, learning_rate=lr, lr_scheduler_type="constant",
                                          weight_decay=0.0, optim=optim, logging_steps=1, save_strategy="no",
                                          report_to=[], use_cpu=use_cpu, seed=seed, data_seed=seed, disable_tqdm=True)
                trainer = WeightedSFTTrainer(model=model, args=targs, train_dataset=dataset, callbacks=[HeldOut()])
                trainer.remove_callback(PrinterCallback)
                t0 = time.perf_counter()
                trainer.train()
                seconds[arm] = time.perf_counter() - t0
                train_loss = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
                part = [{"arm": arm, "step": 0, "train_loss": None, "heldout_loss": start}]
                part += [{"arm": arm, "step": s, "train_loss": train_loss.get(s), "heldout_loss": history.get(s)}
                         for s in range(1, steps + 1)]
                part = [{**r, "selection": selection[arm]} for r in part]
                if save_models is not None:
                    model.save_pretrained(Path(save_models) / arm)
                    tokenizer.save_pretrained(Path(save_models) / arm)
                if store is not None:
                    store.write_part(part)
                rows.extend(part)
    finally:
        snapshot.restore()
        model.train(was_training)
        bar.close()
    rows = [{k: v for k, v in r.items() if k != "selection"} for arm in arms for r in rows if r["arm"] == arm]
    return {"rows": rows, "selected": {a: int((w > 0).sum()) for a, w in weights.items()}, "seconds": seconds}


def plot_loss_curves(rows: list, path, title: str) -> None:
    from ..plotting import pyplot
    plt = pyplot(str(path))
    if plt is None:
        return
    fig, (train_ax, held_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        style = dict(marker="o", ms=3, lw=2.2 if arm == "lark" else 1.4, label=arm)
        train_ax.plot(*zip(*[(r["step"], r["train_loss"]) for r in mine if r["train_loss"] is not None]), **style)
        held_ax.plot(*zip(*[(r["step"], r["heldout_loss"]) for r in mine if r["heldout_loss"] is not None]), **style)
    train_ax.set_title("training loss (the step's weighted SFT loss)", fontsize=9)
    held_ax.set_title("held-out loss (mean token nll)", fontsize=9)
    for ax in (train_ax, held_ax):
        ax.set_xlabel("optimizer step (one problem each)")
        ax.grid(alpha=0.3)
    held_ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
