"""Segment-wise attention for packed rows: attention never crosses a trajectory boundary.

With flash-attn importable and the model on CUDA, transformers' own ``flash_attention_2`` varlen path
does this from the restarting ``position_ids``. Otherwise lark_fast registers an attention function
("lark_segmented") that runs the model's own attention (SDPA or its eager function, with its
soft-capping and sliding window) on each segment separately, with a causal (optionally
sliding-window) mask of the segment's size: O(sum of segment^2) work, never a [T, T] mask.
``packed_attention(model)`` switches a model to it for the duration of a ``with`` block.

A row may also hold a shared prefix once, followed by several continuations of it (``spans``): each
continuation's queries attend to the prefix's keys and to its own, causally, as if the prefix were
written before it (``packing.shared_prefix_row``). The prefix's hidden states are then computed once
for all of them. This needs the flash-attn-free path (varlen flash-attn has no such mask).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import sys
from typing import Optional

import torch

SEGMENTED = "lark_segmented"
_SEGMENTS: contextvars.ContextVar = contextvars.ContextVar("lark_fast_segments", default=None)
_INNER: contextvars.ContextVar = contextvars.ContextVar("lark_fast_inner_attention", default="sdpa")
_registered = False


def _inner_attention(module, name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    if name == "eager":  # every model file defines its own eager function (soft-capping, sinks, ...)
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"{type(module).__name__}: no eager_attention_forward in {type(module).__module__}")
        return fn
    return ALL_ATTENTION_FUNCTIONS[name]


def _segment_mask(n_q: int, n_kv: int, window: Optional[int], additive: bool, dtype, device):
    """Causal mask of n_q queries that are the last n_q of n_kv keys (and sliding-window: i - j < window);
    None when SDPA's is_causal does it (n_q == n_kv, no window in play)."""
    if not additive and n_q == n_kv and (window is None or n_kv <= window):
        return None
    i = torch.arange(n_kv - n_q, n_kv, device=device)[:, None]  # query positions among the keys
    j = torch.arange(n_kv, device=device)[None, :]
    allowed = i >= j
    if window is not None:
        allowed &= (i - j) < window
    if not additive:
        return allowed[None, None]
    return torch.zeros(n_q, n_kv, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def segmented_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention of a packed row [1, H, T, D], one span at a time (from ``segments`` / ``spans``)."""
    spans = _SEGMENTS.get()
    inner_name = _INNER.get()
    inner = _inner_attention(module, inner_name)
    if spans is None:
        return inner(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1:
        raise RuntimeError("segmented attention expects one packed row per forward")
    window = kwargs.get("sliding_window")
    outs = []
    for (a, b), keys in spans:
        if len(keys) == 1:
            k, v = key[:, :, a:b], value[:, :, a:b]
        else:
            k = torch.cat([key[:, :, c:d] for c, d in keys], dim=2)
            v = torch.cat([value[:, :, c:d] for c, d in keys], dim=2)
        mask = _segment_mask(b - a, k.shape[2], window, inner_name == "eager", query.dtype, query.device)
        out, _ = inner(module, query[:, :, a:b], k, v, mask, **kwargs)
        outs.append(out)  # [1, n, H, D]
    return torch.cat(outs, dim=1), None


def _register() -> bool:
    global _registered
    if _registered:
        return True
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # transformers too old for pluggable attention: padded batches instead
        return False
    AttentionInterface.register(SEGMENTED, segmented_attention)
    AttentionMaskInterface.register(SEGMENTED, lambda *args, **kwargs: None)
    _registered = True
    return True


def _configs(model) -> list:
    seen, out = set(), []
    for m in [model, *model.modules()]:
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append(cfg)
    return out


def uses_flash_varlen(model) -> bool:
    return (getattr(model.config, "_attn_implementation", None) == "flash_attention_2"
            and importlib.util.find_spec("flash_attn") is not None)


@contextlib.contextmanager
def packed_attention(model):
    """Within the block, a forward on a packed row attends within segments only (see ``segments``).

    Raises RuntimeError when the model cannot be switched (old transformers).
    """
    if uses_flash_varlen(model):
        yield
        return
    if not _register():
        raise RuntimeError("this transformers version has no AttentionInterface; packing is unavailable")
    configs = _configs(model)
    before = [cfg._attn_implementation for cfg in configs]
    inner = before[0] if before[0] in ("sdpa", "eager") else "sdpa"
    token = _INNER.set(inner)
    try:
        for cfg in configs:
            cfg._attn_implementation = SEGMENTED
        yield
    finally:
        for cfg, name in zip(configs, before):
            cfg._attn_implementation = name
        _INNER.reset(token)


@contextlib.contextmanager
def segments(cu_seqlens: list):
    """Segment boundaries (python ints, [S + 1]) of the packed row in the next forward."""
    with spans(segment_spans(cu_seqlens)):
        yield


def segment_spans(cu_seqlens: list) -> list:
    """The ``spans`` layout of a row of separate segments: each attends to itself alone."""
    cu = [int(x) for x in cu_seqlens]
    return [((a, b), ((a, b),)) for a, b in zip(cu[:-1], cu[1:])]


@contextlib.contextmanager
def spans(query_spans: list):
    """The attention layout of the packed row in the next forward: ``((a, b), key_spans)`` per run of
    queries, in row order, covering the row; the queries attend causally to the concatenated key spans,
    of which they are the last b - a positions (``key_spans`` ends with (a, b))."""
    token = _SEGMENTS.set(query_spans)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)
