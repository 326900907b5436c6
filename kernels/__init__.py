"""Compute kernels of lark_fast, installed as ``lark_fast.kernels``.

One folder per op (``lm_head_stats``, ``lm_head_backward``, ``weighted_ce``; ``sketch`` holds the
projections they share); each holds ``op.py`` (the op: validation and backend choice), a readable
reference (``naive.py``) and its fast paths (``torch_chunked.py``, ``fused.py`` for Triton).
``backend.py`` chooses the implementation for every op; ``triton_utils.py`` holds the Triton helpers
the kernels share.
"""
