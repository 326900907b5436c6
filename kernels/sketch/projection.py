"""Seeded Rademacher projections generated on the fly from a counter-based hash.

Entry (i, j) of the projection with 32-bit ``key`` is

    P[i, j] = (1 - 2 * bit31(mix(mix(key ^ i) ^ j))) / sqrt(k)        i < k (sketch row), j < d

with ``mix`` the lowbias32 bijection of uint32 (x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15;
x *= 0x846ca68b; x ^= x >> 16). The entries are ±1/sqrt(k), independent and zero-mean, so
E[Pᵀ P] = I and for independent P_out, P_in the Kronecker sketch P_out G P_inᵀ has
E‖P_out G P_inᵀ‖² = ‖G‖² and E⟨S_j, S_k⟩ = ⟨G_j, G_k⟩. Nothing of size d × k needs to be stored:
any tile is recomputed from (key, i, j); ``rademacher`` (torch) and ``rademacher_tile`` (Triton,
imported by kernels) give the same signs, which callers scale by 1/sqrt(k) after their products.

Keys come from (seed, layer name, side) through blake2b, so a layer's projections do not depend on
which other layers are sketched.
"""
from __future__ import annotations

import hashlib

import torch

MIX1, MIX2 = 0x7FEB352D, 0x846CA68B
MASK32 = 0xFFFFFFFF
IN, OUT = "in", "out"


def projection_key(seed: int, name: str, side: str) -> int:
    """The 32-bit key of one side (``"in"`` / ``"out"``) of a layer's projection."""
    if side not in (IN, OUT):
        raise ValueError(f"side: expected {IN!r} or {OUT!r}, got {side!r}")
    h = hashlib.blake2b(f"{int(seed)}\x1f{name}\x1f{side}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32): two 16-bit halves keep every product below 2^48."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX2)
    return x ^ (x >> 16)


def rademacher(key: int, rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sqrt(k) P[rows[:, None], cols[None, :]] of the projection with ``key``: signs ±1 (exact in any dtype)."""
    rows = rows.to(torch.int64)
    cols = cols.to(torch.int64)
    u = mix32((rows ^ (key & MASK32)) & MASK32)
    h = mix32(u[:, None] ^ cols[None, :])
    return (1 - 2 * (h >> 31)).to(dtype)


def signs(key: int, k: int, d: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """sqrt(k) P, the whole [k, d] projection as signs (for layers whose d is small enough to hold it)."""
    return rademacher(key, torch.arange(k, device=device), torch.arange(d, device=device), dtype)


try:
    import triton
    import triton.language as tl

    @triton.jit
    def _mix32(x):
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x846CA68B
        return x ^ (x >> 16)

    @triton.jit
    def rademacher_tile(key, rows, cols):
        """[len(cols), len(rows)] tile of Pᵀ (unscaled ±1, fp32): rows are sketch rows i, cols are
        columns j; ``key`` a uint32 scalar. Same bits as ``rademacher``."""
        u = _mix32(key.to(tl.uint32) ^ rows.to(tl.uint32))
        h = _mix32(u[None, :] ^ cols.to(tl.uint32)[:, None])
        return 1.0 - 2.0 * (h >> 31).to(tl.float32)
except ImportError:  # triton is optional
    rademacher_tile = None
