"""Packing tokenised trajectories into rows of a token budget (first-fit decreasing).

A row holds whole trajectories back to back; ``cu_seqlens`` gives their boundaries and
``position_ids`` restart at 0 for each one, so with segment-wise attention every trajectory is
computed exactly as if it were alone.
"""
from __future__ import annotations

from typing import Optional

import torch


def pack_ffd(lengths: list, capacity: int, max_per_row: Optional[int] = None) -> list:
    """Groups item indices into rows: longest first, each into the first row with room.

    An item longer than ``capacity`` gets a row of its own. Deterministic: ties keep input order.
    """
    if capacity < 1:
        raise ValueError(f"capacity: must be >= 1, got {capacity}")
    rows: list = []
    room: list = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free and (max_per_row is None or len(rows[r]) < max_per_row):
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(capacity - n, 0))
    return rows


def packed_row(sequences: list, device=None) -> tuple:
    """``(input_ids [1, T], position_ids [1, T], cu_seqlens [S + 1] int32)`` for token-id lists."""
    lengths = [len(s) for s in sequences]
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)[None]
    pos = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.tensor(lengths, device=device).cumsum(0)
    return ids, pos, cu
