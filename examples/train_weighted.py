"""Weighted SFT of the real SmolLM2-135M-Instruct student on CHAMP trajectories, on CPU, comparing
three selections of the same pool with the same budget of B trajectories per problem:

  lark      LARK weights: top-B by g_hat, weighted by the margin over the first excluded (docs/method.md §5)
  uniform   the same top-B candidates, 1/B each
  random    B random valid candidates per problem, 1/B each

Each arm fine-tunes a fresh copy of the student with ``WeightedSFTTrainer`` (one problem per
optimizer step, normaliser = 1 problem, AdamW, same seed and problem order) and logs the held-out
loss: the mean per-token nll (L, from ``lark_fast.score``) of every teacher trajectory of held-out
problems the student never trains on. Writes ``<out>.csv``, ``<out>.json`` (settings, command,
timings) and ``<out>.png``.

    python examples/train_weighted.py                       # defaults: about 25 minutes on 2 CPU cores

Scale, honestly: a 135M-parameter student, a dozen training problems and a few dozen optimizer steps
per arm. It demonstrates the pipeline end to end and the size of the effects at this scale, not
the paper's results.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lark_fast  # noqa: E402
import lark_fast.measure  # noqa: E402
from lark_fast.champ import champ_pool  # noqa: E402
from lark_fast.demo import STUDENT_PACKAGE  # noqa: E402
from lark_fast.models import load_student  # noqa: E402
from lark_fast.groups import group_offsets  # noqa: E402
from lark_fast.train import LarkScorer, WeightedSFTDataset, WeightedSFTTrainer  # noqa: E402

HERE = Path(__file__).resolve().parent


def uniform_top_b(table, weights) -> np.ndarray:
    """1/|A| on LARK's selected set A of each problem."""
    out = np.zeros(len(weights))
    order, offsets = group_offsets(table["problem_id"])
    for a, b in zip(offsets[:-1], offsets[1:]):
        rows = order[a:b]
        chosen = rows[weights[rows] > 0]
        out[chosen] = 1.0 / max(len(chosen), 1)
    return out


def random_b(table, B: int, seed: int) -> np.ndarray:
    """B valid candidates per problem drawn at random, 1/B each."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(table))
    order, offsets = group_offsets(table["problem_id"])
    for a, b in zip(offsets[:-1], offsets[1:]):
        rows = order[a:b]
        valid = rows[table["status"][rows] == "ok"]
        chosen = rng.choice(valid, size=min(B, len(valid)), replace=False)
        out[chosen] = 1.0 / len(chosen)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-problems", type=int, default=12)
    p.add_argument("--heldout-problems", type=int, default=6)
    p.add_argument("--settings", default="0-Shot,Direct C w/ H", help="CHAMP prompt settings of the training pool")
    p.add_argument("--B", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per arm (one problem each)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--arms", default="lark,uniform,random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(HERE / "train_weighted"), help="output path without extension")
    args = p.parse_args()
    from transformers import TrainerCallback, TrainingArguments

    settings = [s.strip() for s in args.settings.split(",")]
    pool = champ_pool(args.train_problems + args.heldout_problems, settings)
    problems = list(dict.fromkeys(r["problem_id"] for r in pool))
    heldout_ids = set(problems[args.train_problems:])
    train_pool = [r for r in pool if r["problem_id"] not in heldout_ids]
    heldout = [r for r in champ_pool(args.train_problems + args.heldout_problems, ["0-Shot"])
               if r["problem_id"] in heldout_ids]
    print(f"training pool: {len(train_pool)} trajectories of {args.train_problems} problems; held out: "
          f"{len(heldout)} trajectories of {len(heldout_ids)} problems", flush=True)

    model, tokenizer = load_student(STUDENT_PACKAGE, "cpu", "float32")
    t0 = time.perf_counter()
    table = lark_fast.score(model, tokenizer, train_pool, max_length=args.max_length, topk=0, progress=False)
    lark = lark_fast.select(table, B=args.B)
    score_seconds = time.perf_counter() - t0
    print(f"anchor scoring: {score_seconds:.0f} s, {table.info['scored_tokens']} tokens", flush=True)
    arms = {"lark": lark, "uniform": uniform_top_b(table, lark), "random": random_b(table, args.B, args.seed)}
    evaluator = LarkScorer(tokenizer, heldout, B=args.B, max_length=args.max_length)
    evaluator(model, step=0)
    initial = evaluator.history[-1]["mean_L"]
    print(f"held-out L at step 0: {initial:.4f}", flush=True)

    class HeldOut(TrainerCallback):
        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step % args.eval_every == 0 or state.global_step == state.max_steps:
                evaluator(model, step=state.global_step)
                print(f"  step {state.global_step}: held-out L {evaluator.history[-1]['mean_L']:.4f}", flush=True)

    rows, timings = [], {}
    for arm in args.arms.split(","):
        model, tokenizer = load_student(STUDENT_PACKAGE, "cpu", "float32")
        ds = WeightedSFTDataset(train_pool, tokenizer, weights=np.zeros(len(train_pool)), max_length=args.max_length)
        ds.set_weights(arms[arm], keys=LarkScorer.keys(table))
        targs = TrainingArguments(output_dir=tempfile.mkdtemp(prefix=f"lark_train_{arm}_"), max_steps=args.steps,
                                  per_device_train_batch_size=1, learning_rate=args.lr, lr_scheduler_type="constant",
                                  weight_decay=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                                  seed=args.seed, disable_tqdm=True)
        start = len(evaluator.history)
        trainer = WeightedSFTTrainer(model=model, args=targs, train_dataset=ds, callbacks=[HeldOut()])
        t0 = time.perf_counter()
        print(f"arm {arm}: {int((arms[arm] > 0).sum())} trajectories with weight > 0", flush=True)
        trainer.train()
        timings[arm] = time.perf_counter() - t0
        train_loss = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
        rows.append({"arm": arm, "step": 0, "heldout_L": initial, "train_loss": None})
        for h in evaluator.history[start:]:
            rows.append({"arm": arm, "step": h["step"], "heldout_L": h["mean_L"], "train_loss": train_loss.get(h["step"])})

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w") as f:
        f.write("arm,step,heldout_L,train_loss\n")
        for r in rows:
            f.write(f"{r['arm']},{r['step']},{r['heldout_L']:.6f},{'' if r['train_loss'] is None else r['train_loss']}\n")
    info = {"command": "python " + " ".join(sys.argv), **vars(args), "train_trajectories": len(train_pool),
            "heldout_trajectories": len(heldout), "anchor_scoring_seconds": round(score_seconds, 1),
            "train_seconds": {k: round(v, 1) for k, v in timings.items()}, "machine": lark_fast.measure.machine()}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"), info)
    for arm in timings:
        final = [r["heldout_L"] for r in rows if r["arm"] == arm][-1]
        print(f"{arm:<8} held-out L {initial:.4f} -> {final:.4f} ({timings[arm]:.0f} s)")
    print(f"wrote {out.with_suffix('.csv')}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return 0


def plot(rows, path, info) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        pts = [(r["step"], r["heldout_L"]) for r in rows if r["arm"] == arm]
        ax.plot(*zip(*pts), marker="o", label=arm)
    ax.set_xlabel("optimizer step (one problem each)")
    ax.set_ylabel("held-out mean token nll")
    ax.set_title(f"SmolLM2-135M on CHAMP, B={info['B']}: {info['train_problems']} train / "
                 f"{info['heldout_problems']} held-out problems", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
