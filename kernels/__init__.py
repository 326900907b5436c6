"""Compute kernels of lark_fast, installed as ``lark_fast.kernels``.

One folder per op; each holds a readable reference (``naive.py``) next to its fast paths.
"""
