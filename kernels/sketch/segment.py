"""Per-segment sums of outer products, S_s = Σ_{t ∈ segment s} a_t b_tᵀ, without per-token outer products.

Each segment of ``cu_seqlens`` is cut into chunks of at most ``block`` tokens; the chunks are
zero-padded to ``block`` rows and multiplied in one thin batched GEMM ([C, ka, block] @ [C, block, kb]),
then the chunks of each segment are summed in order (torch.segment_reduce). Padding is bounded by
one partial chunk per segment, and a segment's result depends only on its own rows, so it is the
same whatever else is packed in the row. ``segment_outer_naive`` is the readable reference.
"""
from __future__ import annotations

import torch


def segment_outer_naive(a: torch.Tensor, b: torch.Tensor, cu_seqlens) -> torch.Tensor:
    cu = [int(x) for x in cu_seqlens]
    return torch.stack([a[s:e].T @ b[s:e] for s, e in zip(cu[:-1], cu[1:])]) if len(cu) > 1 else \
        a.new_zeros(0, a.shape[1], b.shape[1])


class SegmentPlan:
    """Chunk layout of one ``cu_seqlens``, built once and reused for every pair (a, b) of that batch."""

    def __init__(self, cu_seqlens, device=None, block: int = 128):
        if block < 1:
            raise ValueError(f"block: must be >= 1, got {block}")
        cu = [int(x) for x in cu_seqlens]
        if not cu or cu[0] != 0 or any(e < s for s, e in zip(cu[:-1], cu[1:])):
            raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0, got {cu[:8]}")
        self.n_tokens = cu[-1]
        self.n_segments = len(cu) - 1
        index, per_segment = [], []
        for s, e in zip(cu[:-1], cu[1:]):
            starts = range(s, e, block)
            per_segment.append(len(starts))
            for c in starts:
                rows = list(range(c, min(c + block, e)))
                index.append(rows + [self.n_tokens] * (block - len(rows)))  # row N is a zero row
        self.block = block
        self.index = torch.tensor(index, dtype=torch.long, device=device).view(-1, block)
        self.chunks = torch.tensor(per_segment, dtype=torch.long, device=device)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.n_tokens:
            raise ValueError(f"expected {self.n_tokens} rows (cu_seqlens[-1]), got {x.shape[0]}")
        return torch.cat([x, x.new_zeros(1, x.shape[1])])[self.index]  # [C, block, k]

    def outer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[S, ka, kb]: Σ_t a_t b_tᵀ per segment, in a's dtype."""
        per_chunk = torch.bmm(self._padded(a).transpose(1, 2), self._padded(b))
        flat = per_chunk.reshape(per_chunk.shape[0], -1)
        return torch.segment_reduce(flat, "sum", lengths=self.chunks, unsafe=True).view(
            self.n_segments, a.shape[1], b.shape[1])
