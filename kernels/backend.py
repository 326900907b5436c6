"""Which implementation of an op runs: one chooser for every op folder.

Backends:
- ``"triton"``: the fused Triton kernels (CUDA tensors; on CPU only through the interpreter, when
  ``TRITON_INTERPRET=1`` was set before triton was imported);
- ``"cpu"``: the fused C++ kernels of ``lark_fast._C`` (CPU tensors; the ops that have one);
- ``"torch"``: the chunked torch paths (any device; the readable reference-speed path);
- ``"auto"``: Triton where it runs (CUDA, or everywhere under the interpreter), else the C++ kernel on
  CPU tensors where the op has one, else torch.

An op lists the backends it has (``available``); asking for one it lacks, or for Triton where it
cannot run, is a ValueError that says why. ``lark_fast.ops`` adds the ``LARK_FAST_BACKEND``
environment override on top.
"""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton", "cpu")

# triton.jit reads TRITON_INTERPRET when a kernel module is imported; everything here reads it once, too.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAVE_TRITON = importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``."""
    return HAVE_TRITON and (device.type == "cuda" or INTERPRET)


def choose_backend(op: str, backend: str, device: torch.device, available=BACKENDS) -> str:
    """The concrete backend ("torch", "triton" or "cpu") of ``op`` for tensors on ``device``; ``available``
    lists the backends the op has ("cpu" only when its C++ kernel was built)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if "triton" in available and triton_runs_on(device):
            return "triton"
        return "cpu" if "cpu" in available and device.type == "cpu" else "torch"
    if backend not in available:
        raise ValueError(f"backend={backend!r}: {op} has no such implementation here "
                         f"(it has {', '.join(repr(b) for b in available if b != 'auto')})")
    if backend == "triton" and not triton_runs_on(device):
        why = "triton is not installed (pip install 'lark_fast[gpu]')" if not HAVE_TRITON else \
            f"the tensors are on {device.type} (Triton needs CUDA, or TRITON_INTERPRET=1 set before lark_fast " \
            "is imported)"
        raise ValueError(f"backend='triton': {op} cannot run with Triton: {why}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu': {op}'s C++ kernel takes CPU tensors, got {device.type}")
    return backend
