"""Packing tokenised trajectories into rows of a token budget (first-fit decreasing).

A row holds whole trajectories back to back; ``cu_seqlens`` gives their boundaries and
``position_ids`` restart at 0 for each one, so with segment-wise attention every trajectory is
computed exactly as if it were alone.

Trajectories that begin with the same tokens (the candidates of one problem share its prompt) can
share them: ``shared_prefix_row`` writes each shared prefix once, followed by the rest of every
trajectory that has it, with ``attention.spans`` letting each of those attend to the prefix as if it
were its own beginning; ``pack_shared`` packs rows counting each shared prefix once.
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


def prefix_groups(sequences: list, prefix_lengths: list) -> list:
    """Indices grouped by identical first ``prefix_lengths[i]`` tokens (first-appearance order); a
    sequence with no prefix (0) is a group of its own."""
    groups: dict = {}
    for i, (seq, p) in enumerate(zip(sequences, prefix_lengths)):
        groups.setdefault(tuple(seq[:p]) if p > 0 else ("alone", i), []).append(i)
    return list(groups.values())


def pack_shared(sequences: list, prefix_lengths: list, capacity: int, max_per_row: Optional[int] = None) -> list:
    """Rows of item indices, like ``pack_ffd``, where the items of one prefix group count their shared
    prefix once: a group is cut into units of at most ``capacity`` tokens (one item at least), units are
    packed first-fit decreasing."""
    units, sizes = [], []
    for group in prefix_groups(sequences, prefix_lengths):
        p = prefix_lengths[group[0]]
        unit, size = [], p
        for i in group:
            rest = len(sequences[i]) - p
            if unit and (size + rest > capacity or (max_per_row is not None and len(unit) >= max_per_row)):
                units.append(unit)
                sizes.append(size)
                unit, size = [], p
            unit.append(i)
            size += rest
        units.append(unit)
        sizes.append(size)
    rows = pack_ffd(sizes, capacity, None)
    out = []
    for row in rows:
        items = [i for u in row for i in units[u]]
        if max_per_row is not None:  # units were cut to max_per_row; a row of several may hold more
            out += [items[k:k + max_per_row] for k in range(0, len(items), max_per_row)]
        else:
            out.append(items)
    return out


def shared_prefix_row(sequences: list, prefix_lengths: list, device=None) -> tuple:
    """``(input_ids [1, T], position_ids [1, T], spans, where)``: one packed row in which each group of
    ``prefix_groups`` writes its shared prefix once, then the rest of each of its sequences. ``spans`` is
    the attention layout for ``attention.spans``; ``where[i]`` lists the row position of every token of
    sequence i, so that hidden state ``where[i][t]`` is that of token t of sequence i alone."""
    ids, pos, spans, where = [], [], [], [None] * len(sequences)
    for group in prefix_groups(sequences, prefix_lengths):
        p = prefix_lengths[group[0]] if len(group) > 1 else 0
        a = len(ids)
        if p:
            ids += sequences[group[0]][:p]
            pos += range(p)
            spans.append(((a, a + p), ((a, a + p),)))
        for i in group:
            rest = sequences[i][p:]
            b = len(ids)
            ids += rest
            pos += range(p, p + len(rest))
            if rest:
                spans.append(((b, b + len(rest)), ((a, a + p), (b, b + len(rest))) if p else ((b, b + len(rest)),)))
            where[i] = list(range(a, a + p)) + list(range(b, b + len(rest)))
    return (torch.tensor([ids], dtype=torch.long, device=device), torch.tensor([pos], dtype=torch.long, device=device),
            spans, where)
