"""LM-head statistics (SPEC §2): per-token lse, nll, exact Brier, entropy, rank and top-K Brier
from hidden states and the LM-head weight, without materialising logits.

- ``naive.py``: full-logits reference (readable, O(N V) memory)
- ``torch_chunked.py``: streaming torch path
- ``cpu.py``: fused C++ kernel (``lark_fast._C``), the CPU default; ``CPU_AVAILABLE`` says whether the
  extension has it
- ``fused.py``: fused Triton kernel (CUDA, or the Triton interpreter under ``TRITON_INTERPRET=1``);
  ``lm_head_stats_triton`` is None when triton is not installed (extra ``gpu``), and
  ``TRITON_INTERPRET`` says whether its kernels were built for the interpreter
"""
from .common import MAX_TOPK, RANK_CLIP, RANK_TIE, LMHeadStats, SegmentSums, check_inputs, reduce_segments, segment_sums
from .cpu import AVAILABLE as CPU_AVAILABLE, lm_head_stats_cpu
from .naive import lm_head_stats_naive
from .torch_chunked import lm_head_stats_torch

try:
    from .fused import INTERPRET as TRITON_INTERPRET, lm_head_stats_triton
except ImportError:  # triton is optional
    TRITON_INTERPRET, lm_head_stats_triton = False, None

__all__ = ["LMHeadStats", "SegmentSums", "MAX_TOPK", "RANK_CLIP", "RANK_TIE", "check_inputs", "reduce_segments",
           "segment_sums", "lm_head_stats_naive", "lm_head_stats_torch", "lm_head_stats_triton", "TRITON_INTERPRET",
           "lm_head_stats_cpu", "CPU_AVAILABLE"]
