"""LM-head statistics (docs/method.md §2): per-token lse, nll, exact Brier, entropy, rank and top-K
Brier from hidden states and the LM-head weight, without materialising logits.

- ``op.py``: ``lm_head_stats``, the op (validation, backend choice, segment sums, autograd)
- ``naive.py``: full-logits reference (readable, O(N V) memory)
- ``torch_chunked.py``: streaming torch path
- ``cpu.py``: launcher of the fused C++ kernel (``csrc/lm_head_stats*``), the CPU default; ``CPU_AVAILABLE``
  says whether the extension has it
- ``fused.py``: fused Triton kernel (CUDA, or the Triton interpreter under ``TRITON_INTERPRET=1``);
  ``lm_head_stats_triton`` is None when triton is not installed (extra ``gpu``)
"""
from .common import MAX_TOPK, RANK_CLIP, RANK_TIE, LMHeadStats, SegmentSums, check_inputs, reduce_segments, segment_sums
from .naive import lm_head_stats_naive
from .op import CPU_AVAILABLE, MAX_SKETCH, lm_head_stats, lm_head_stats_cpu, lm_head_stats_triton
from .torch_chunked import lm_head_stats_torch

__all__ = ["lm_head_stats", "LMHeadStats", "SegmentSums", "MAX_TOPK", "MAX_SKETCH", "RANK_CLIP", "RANK_TIE",
           "check_inputs", "reduce_segments", "segment_sums", "lm_head_stats_naive", "lm_head_stats_torch",
           "lm_head_stats_triton", "lm_head_stats_cpu", "CPU_AVAILABLE"]
