"""Training with LARK weights (docs/method.md §6): a fused weighted SFT loss, packed weighted batches, an HF
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

The loss runs inside the LM head's own forward, so FSDP2 and DeepSpeed ZeRO-3 work as DDP does
(docs/method.md §6.6). ``lark-fast train`` (cli.py; settings in config.py) wraps the trainer: YAML settings in
the published names, LoRA through peft, DeepSpeed, FSDP2.
"""
from __future__ import annotations
from .collator import REDUCTIONS, PackedCollator
from .data import WeightedSFTDataset, read_train_set
from .loss import weighted_sft_loss
from .refresh import AnchorRefreshCallback, LarkScorer
from .trainer import WeightedSFTTrainer

__all__ = ["weighted_sft_loss", "read_train_set", "WeightedSFTDataset", "PackedCollator", "WeightedSFTTrainer",
           "LarkScorer", "AnchorRefreshCallback", "REDUCTIONS"]
