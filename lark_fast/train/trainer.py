"""``transformers.Trainer`` with the weighted loss of packed rows and a normaliser fixed per optimizer
step (docs/method.md §6.4), computed inside the LM head's forward so that sharded parameters work (§6.6)."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist
from transformers import Trainer

from .. import attention
from ..head import LMHead, check_head_logits, only_capture
from .collator import PackedCollator
from .loss import weighted_sft_loss


class WeightedSFTTrainer(Trainer):
    """``transformers.Trainer`` with the weighted loss of packed rows (see the module docstring).

    Extra arguments: ``normalizer`` ("problems" or a positive number) and ``loss_backend``
    ("auto", "torch", "triton"). The data collator defaults to ``PackedCollator()``; datasets are
    ``WeightedSFTDataset``s. Data parallelism: DDP, FSDP2 and DeepSpeed ZeRO-3: the loss runs inside the
    LM head's own forward (``inside_head``), where sharded parameters are gathered.
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
        # the head's module and logit transform; its weight and bias are read in the module's forward
        # (inside_head), never kept: FSDP2 and ZeRO-3 replace or empty them
        self.head = dataclasses.replace(LMHead.from_model(self.accelerator.unwrap_model(self.model)), weight=None,
                                        bias=None)
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
        """Once: the head's logits must equal the model's own on the first trajectory's first 16 tokens, with
        the head's weight as its forward sees it (gathered under FSDP2 / ZeRO-3); as ``head.verify_lm_head``."""
        if self._head_verified:
            return
        model = self.accelerator.unwrap_model(model)
        ids = inputs["input_ids"][:, : min(16, int(inputs["cu_seqlens"][1]))].to(model.device)
        with torch.no_grad(), inside_head(self.head, lambda head, hidden: (head.logits(hidden), hidden.dtype),
                                          logits=True) as box:
            theirs = model(input_ids=ids, use_cache=False).logits.float()
        ours, dtype = only_capture(model, box)
        check_head_logits(model, ours, theirs, dtype, "loss")
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
        targets, token_weights = labels[0, 1:], weights[0, 1:]

        def loss_fn(head, hidden):  # position t predicts token t + 1; each segment starts with label -100
            return weighted_sft_loss(hidden[0, :-1], head.weight, targets, token_weights, normalizer, bias=head.bias,
                                     logit_scale=head.logit_scale, softcap=head.softcap, backend=self.loss_backend)
        with self.packed(model, cu), inside_head(self.head, loss_fn) as box:
            out = model(**inputs, use_cache=False)
        # the head's (empty) output depends on the loss, so the backward passes the sharding wrappers' hooks
        # on it (they gather the head's weight again) before it reaches the loss; its sum is exactly 0
        loss = only_capture(model, box) + out.logits.sum()
        if model.training and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP, FSDP2 and ZeRO-3 average gradients over processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


@contextlib.contextmanager
def inside_head(head: LMHead, fn: Callable, *, logits: bool = False):
    """Runs ``fn(live_head, hidden)`` inside the forward of the LM head module, once per forward in the block,
    and collects the results into the yielded list (docs/method.md §6.6).

    ``live_head`` is ``head`` with the module's weight and bias as its forward sees them: FSDP2 and DeepSpeed
    ZeRO-3 gather a module's sharded parameters in their forward pre-hooks, which run before this one, and
    the inputs arrive wrapped by their backward hooks, so the gradients of ``fn``'s result reach the
    sharded parameters and are reduce-scattered like any other. Unless ``logits``, the module gets an empty
    slice of its input (no logits are computed) and its output is replaced by an empty tensor that depends
    on ``fn``'s result: a loss that adds ``model(...).logits.sum()`` (exactly 0) sends its backward through
    the wrappers' pre-backward hooks on that output, which gather the weight again for the backward.
    """
    box: list = []

    def pre(module, args):
        live = dataclasses.replace(head, weight=module.weight, bias=getattr(module, "bias", None))
        box.append(fn(live, args[0]))
        return None if logits else (args[0][..., :0, :],) + tuple(args[1:])

    def post(_module, _args, output):
        return output + box[-1]  # empty; broadcasting a scalar adds nothing but the dependency

    handles = [head.module.register_forward_pre_hook(pre)]
    if not logits:
        handles.append(head.module.register_forward_hook(post, prepend=True))  # before the wrappers' hooks
    try:
        yield box
    finally:
        for h in handles:
            h.remove()
