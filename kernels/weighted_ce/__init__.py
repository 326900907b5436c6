"""Weighted cross-entropy through the LM head (docs/method.md §6): sum_t w_t nll_t / normalizer with gradients
for hidden, weight and bias, without materialising logits.

- ``op.py``: ``weighted_ce``, the op (validation, backend choice)
- ``naive.py``: full-logits reference (autograd; the oracle in tests, O(N V) memory)
- ``torch_chunked.py``: token blocks over the whole vocabulary, gradients formed in the forward (CPU)
- ``fused.py``: Triton forward (online logsumexp over vocabulary tiles) and tile-recomputing backward (CUDA)
"""
from .naive import weighted_ce_naive
from .op import WeightedCETriton, weighted_ce
from .torch_chunked import WeightedCETorch

__all__ = ["weighted_ce", "weighted_ce_naive", "WeightedCETorch", "WeightedCETriton"]
