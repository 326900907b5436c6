"""``transformers.Trainer`` with the weighted loss of packed rows and a normaliser fixed per optimizer
step (docs/method.md §6.4)."""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Union

import torch
import torch.distributed as dist
from transformers import Trainer

from .. import attention
from ..head import LMHead, capture_head_input, only_capture, verify_lm_head
from .collator import PackedCollator
from .loss import weighted_sft_loss


class WeightedSFTTrainer(Trainer):
    """``transformers.Trainer`` with the weighted loss of packed rows (see the module docstring).

    Extra arguments: ``normalizer`` ("problems" or a positive number) and ``loss_backend``
    ("auto", "torch", "triton"). The data collator defaults to ``PackedCollator()``; datasets are
    ``WeightedSFTDataset``s. Data parallelism: DDP (torchrun); FSDP / ZeRO-3 shard the LM head,
    which the fused loss reads directly, and are not supported.
    """

    loss_is_scaled_for_ga = True  # each micro-batch is already divided by its step's normaliser

    def __init__(self, *args, normalizer: Union[str, float] = "problems", loss_backend: Optional[str] = None, **kwargs):
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
        """Once: the head's logits must equal the model's own on the first trajectory (head.verify_lm_head)."""
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
        with self.packed(model, cu), capture_head_input(self.head) as box:
            model(**inputs, use_cache=False)
        hidden = only_capture(model, box)[0, :-1]  # position t predicts token t + 1; each segment starts with label -100
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
