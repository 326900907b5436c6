"""The student's LM head as lark_fast sees it, and the one way its input is captured.

Logits are z = softcap(logit_scale * (W h + b)) with W, b the output embeddings and the scale /
soft-cap the architecture applies after them (Gemma's ``final_logit_softcapping``, Cohere's
``logit_scale``, Granite's ``logits_scaling``); ``verify_lm_head`` checks this against the model's own
logits, so an architecture with another head fails loudly instead of scoring wrong.

The head's input h is captured by a forward pre-hook on the output embeddings (``capture_head_input``)
that hands the head an empty slice of it: the model runs its forward to the end, as DDP and
gradient checkpointing expect, and computes no logits. Scoring, training and the self-checks all
use this one mechanism.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from . import ops


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

    @property
    def transform(self) -> dict:
        """The keyword arguments of the ops that describe this head's logits."""
        return dict(bias=self.bias, logit_scale=self.logit_scale, softcap=self.softcap)

    def stats(self, hidden, targets, cu_seqlens=None, topk=0, backend=None, sketch_dim=0,
              sketch_key=0) -> ops.LMHeadStats:
        return ops.lm_head_stats(hidden, self.weight, targets, cu_seqlens=cu_seqlens, topk=topk, sketch_dim=sketch_dim,
                                 sketch_key=sketch_key, backend=backend, **self.transform)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Materialised logits, fp32; only for checking a handful of positions."""
        z = hidden.float() @ self.weight.float().T
        if self.bias is not None:
            z = z + self.bias.float()
        z = z * self.logit_scale
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)


@contextlib.contextmanager
def capture_head_input(head: LMHead, *, logits: bool = False):
    """Collects the head's input (with its autograd graph, if any) of every forward run in the block
    into the yielded list. Unless ``logits``, the head gets an empty slice of it and computes no logits."""
    box: list = []

    def hook(_module, args):
        box.append(args[0])
        return None if logits else (args[0][..., :0, :],) + tuple(args[1:])

    handle = head.module.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def hidden_before_head(model, head: LMHead, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
    """The LM head's input [B, T, d] for a batch, without computing any logits (with its autograd
    graph when grad mode is on and something upstream requires grad)."""
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    with capture_head_input(head) as box:
        model(**kwargs)
    return only_capture(model, box)


def only_capture(model, box: list) -> torch.Tensor:
    """The one head input of a forward; raises when the head ran never or several times."""
    if len(box) != 1:
        raise RuntimeError(f"{type(model).__name__}: its output embeddings ran {len(box)} times in one forward; "
                           "lark_fast needs them applied once, to the final hidden states")
    return box[0]


def verify_lm_head(model, head: LMHead, input_ids: torch.Tensor) -> torch.Tensor:
    """Compares the head's logits with the model's own on a short sequence (one forward); raises if
    they differ. Returns the head's input [1, T, d]."""
    ids = input_ids[:, :16]
    with capture_head_input(head, logits=True) as box:
        theirs = model(input_ids=ids, use_cache=False).logits.float()
    hidden = only_capture(model, box)
    check_head_logits(model, head.logits(hidden), theirs, hidden.dtype, "scores")
    return hidden


def check_head_logits(model, ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Raises unless the head's logits ``ours`` equal the model's own ``theirs`` (computed in ``dtype``) to
    1e-3 relative in fp32 (5e-2 otherwise); ``what`` the model's logits would be wrong for."""
    if ours.shape != theirs.shape:
        raise RuntimeError(f"{type(model).__name__}: the model's logits have shape {tuple(theirs.shape)}, "
                           f"its output embeddings give {tuple(ours.shape)}; unsupported LM head")
    err = (ours - theirs).abs().max().item()
    tol = (1e-3 if dtype == torch.float32 else 5e-2) * max(1.0, theirs.abs().max().item())
    if not err <= tol:
        raise RuntimeError(f"{type(model).__name__}: logits from its output embeddings differ from the model's "
                           f"own by {err:.3g} (tolerance {tol:.3g}); the architecture transforms logits in a way "
                           f"lark_fast does not know (scale/soft-cap), so its {what} would be wrong")
