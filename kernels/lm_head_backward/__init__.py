"""LM-head backward: the activation gradient dH of per-token nll (the statistics' ``nll``) with
respect to the head's input, given an upstream gradient per token. Parameters get no gradient.

- ``op.py``: ``lm_head_backward``, the op (backend choice)
- ``naive.py``: full-logits reference (readable, O(N V) memory)
- ``torch_chunked.py``: streaming torch path; ``output_grad_chunks`` also feeds exact gradient
  norms of the head
- ``fused.py``: fused Triton kernel (CUDA, or the interpreter under ``TRITON_INTERPRET=1``);
  ``lm_head_backward_triton`` is None without triton
"""
from .naive import lm_head_backward_naive
from .op import lm_head_backward, lm_head_backward_triton
from .torch_chunked import lm_head_backward_torch, output_grad_chunks

__all__ = ["lm_head_backward", "lm_head_backward_naive", "lm_head_backward_torch", "lm_head_backward_triton",
           "output_grad_chunks"]
