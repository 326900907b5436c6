"""The scorer: a batch of tokenised records in, per-record float64 sums out.

The student runs to the input of its LM head (``head.hidden_before_head``: no logits), then the fused
statistics op (``ops.lm_head_stats``) turns the head's input at the scored positions into per-token
statistics and per-record sums (docs/method.md §2-§3). Batches are packed rows with segment-wise
attention when the model supports it (checked at construction), right-padded otherwise. With a
gradient sketcher the batch also gets one activation-gradient backward (docs/method.md §4).
``scoring.score`` drives a whole pool through a ``Scorer``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import attention, chat
from .head import LMHead, hidden_before_head, verify_lm_head
from .kernels.lm_head_backward import output_grad_chunks
from .models import context_length
from .packing import pack_ffd, pack_shared, packed_row, shared_prefix_row
from .sketch import GradientSketcher, frozen


@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class Layout:
    """One batch's token layout: ``ids`` [B, T], ``position_ids`` (packed) or ``mask`` (padded),
    ``spans`` (packed: the attention layout, ``attention.spans``), ``cu_full`` (python ints: every
    position, one segment per record; None when records share a prefix), ``gather`` (the positions that
    predict the scored tokens, in the flattened batch), ``targets`` (those tokens) and ``cu_scored``
    (int32: scored tokens per record)."""

    ids: torch.Tensor
    position_ids: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    spans: Optional[list]
    cu_full: Optional[list]
    gather: torch.Tensor
    targets: torch.Tensor
    cu_scored: torch.Tensor


class Scorer:
    """Scores batches of tokenised records with one model; reusable across pools.

    At construction, a self-check on short random sequences (five small forwards) verifies that the LM
    head reproduces the model's own logits (``verify_head``) and, with ``packing="auto"``, that a packed
    forward with segment-wise attention equals separate ones (otherwise, or with "off", batches are
    right-padded), and that records sharing a prompt can share its forward (``shares_prefixes``; then
    a batch writes each shared prompt once, except when sketching gradients, which must not mix). ``backend`` chooses the LM-head statistics'
    implementation (``ops.lm_head_stats``; None: $LARK_FAST_BACKEND, else "auto").

    ``sketch_dim=k`` adds per-trajectory gradient sketches (``lark_fast.sketch``) of the layers
    ``sketch_layers`` (default: every nn.Linear / Conv1D and the LM head) with projections seeded by
    ``sketch_seed``; ``exact_grad_norm`` also computes the exact squared gradient norms.
    ``compat="published"`` tokenises as the published scorer did (``chat.PublishedChatTokenizer``).
    """

    def __init__(self, model, tokenizer, *, max_length: Optional[int] = None, topk: int = 50,
                 chat_template: Optional[str] = None, verify_head: bool = True, packing: str = "auto",
                 backend: Optional[str] = None, sketch_dim: Optional[int] = None, sketch_layers=None,
                 sketch_seed: int = 0, exact_grad_norm: bool = False, compat: str = "exact"):
        if packing not in ("auto", "off"):
            raise ValueError(f"packing: expected 'auto' or 'off', got {packing!r}")
        self.backend = backend
        self.model = model
        self.head = LMHead.from_model(model)
        context = context_length(model)
        if max_length is None:
            max_length = context
        elif context is not None and max_length > context:
            warnings.warn(f"max_length={max_length} is above {type(model).__name__}'s context length ({context}): "
                          "positions past it were never trained, and their scores are unreliable")
        tokenize = chat.PublishedChatTokenizer if compat == "published" else chat.ChatTokenizer
        self.chat = tokenize(tokenizer, max_length=max_length, chat_template=chat_template)
        self.topk = topk
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = self.head.weight.device
        self.vocab_size = self.head.weight.shape[0]
        self.packed, self.shares_prefixes = self._self_check(verify_head, packing == "auto")
        if exact_grad_norm and sketch_dim is None:
            raise ValueError("exact_grad_norm: validates the sketches, so it needs sketch_dim")
        self.sketcher = None if sketch_dim is None else GradientSketcher(
            model, self.head.module, sketch_dim, seed=sketch_seed, layers=sketch_layers, exact=exact_grad_norm)

    def _self_check(self, verify_head: bool, packing: bool) -> tuple:
        """Verifies the head (raises) and tells whether packing reproduces separate forwards, and whether
        a packed row whose records share a prefix does too: (packed, shares_prefixes)."""
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randint(0, self.vocab_size, (n,), generator=g).tolist() for n in (9, 5))
        seqs = [a, b, a[:4] + b]  # the third shares a's first 4 tokens
        with torch.inference_mode(), eval_mode(self.model):
            first = torch.tensor([seqs[0]], device=self.device)
            if verify_head:
                alone = [verify_lm_head(self.model, self.head, first)[0]]
            if not packing:
                return False, False
            if not verify_head:
                alone = [hidden_before_head(self.model, self.head, first)[0]]
            alone += [hidden_before_head(self.model, self.head, torch.tensor([s], device=self.device))[0]
                      for s in seqs[1:]]
        try:
            with torch.inference_mode(), eval_mode(self.model), attention.packed_attention(self.model):
                ids, pos, cu = packed_row(seqs[:2], self.device)
                with attention.segments(cu.tolist()):
                    packed = hidden_before_head(self.model, self.head, ids, position_ids=pos)[0]
                ids, pos, spans, where = shared_prefix_row([seqs[0], seqs[2]], [4, 4], self.device)
                with attention.spans(spans):
                    shared = hidden_before_head(self.model, self.head, ids, position_ids=pos)[0]
        except RuntimeError as e:
            warnings.warn(f"packing unavailable for {type(self.model).__name__} ({e}); using padded batches")
            return False, False

        def close(got, ref) -> tuple:
            ref = ref.float()
            tol = (1e-4 if ref.dtype == torch.float32 and got.dtype == torch.float32 else 3e-2) * \
                max(1.0, ref.abs().max().item())
            err = (got.float() - ref).abs().max().item()
            return err <= tol, err

        ok, err = close(packed, torch.cat(alone[:2]))
        if not ok:
            warnings.warn(f"{type(self.model).__name__}: a packed forward differs from separate ones by {err:.3g}; "
                          "using padded batches")
            return False, False
        if attention.uses_flash_varlen(self.model):  # its varlen path has no shared-prefix spans
            return True, False
        shares, err = close(torch.cat([shared[where[0]], shared[where[1]]]), torch.cat([alone[0], alone[2]]))
        if not shares:
            warnings.warn(f"{type(self.model).__name__}: a shared-prefix forward differs from separate ones by "
                          f"{err:.3g}; prompts are not shared")
        return True, shares

    def _sharing(self, share_prefixes: bool) -> bool:
        """Whether records with the same prompt share its forward: asked for, packed, and self-checked."""
        return self.packed and share_prefixes and self.shares_prefixes

    def batches(self, items: list, max_tokens: int, max_per_row: Optional[int], share_prefixes: bool) -> list:
        """Rows of indices into ``items`` for ``score_batch``: first-fit decreasing by tokens, a prompt
        shared by several records counted once when they will share it."""
        seqs = [t.input_ids for t in items]
        if self._sharing(share_prefixes):
            return pack_shared(seqs, [t.start for t in items], max_tokens, max_per_row)
        return pack_ffd([len(s) for s in seqs], max_tokens, max_per_row)

    def layout(self, items: list, share_prefixes: bool = False) -> Layout:
        """The token layout of a batch of ``Tokenized`` records: a packed row (with ``share_prefixes`` and
        ``self.shares_prefixes``, records with the same prompt share its forward) or a padded batch."""
        seqs = [t.input_ids for t in items]
        lengths = [len(s) for s in seqs]
        spans = cu_full = mask = pos = None
        if self._sharing(share_prefixes):
            ids, pos, spans, where = shared_prefix_row(seqs, [t.start for t in items], self.device)
        elif self.packed:
            ids, pos, cu = packed_row(seqs, self.device)
            cu_full = cu.tolist()
            spans = attention.segment_spans(cu_full)
            where = [range(a, b) for a, b in zip(cu_full[:-1], cu_full[1:])]
        else:
            width = max(lengths)
            ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, n in enumerate(lengths):
                ids[i, :n] = torch.tensor(seqs[i])
                mask[i, :n] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            cu_full = [i * width for i in range(len(items) + 1)]  # row i starts at i * T once flattened
            where = [range(i * width, i * width + n) for i, n in enumerate(lengths)]
        # token t of a record is predicted from position t - 1
        gather = torch.tensor([w for t, wh, n in zip(items, where, lengths) for w in wh[t.start - 1:n - 1]],
                              dtype=torch.long)
        targets = torch.tensor([y for s, t in zip(seqs, items) for y in s[t.start:]], dtype=torch.long)
        counts = torch.tensor([0] + [n - t.start for t, n in zip(items, lengths)])
        cu_scored = counts.cumsum(0).to(device=self.device, dtype=torch.int32)
        return Layout(ids, pos, mask, spans, cu_full, gather.to(self.device), targets.to(self.device), cu_scored)

    def head_inputs(self, lay: Layout) -> tuple:
        """Head inputs at the scored positions [N, d] and their targets [N]."""
        if self.packed:
            with attention.packed_attention(self.model), attention.spans(lay.spans):
                hidden = hidden_before_head(self.model, self.head, lay.ids, position_ids=lay.position_ids)
        else:
            hidden = hidden_before_head(self.model, self.head, lay.ids, lay.mask)
        return hidden.reshape(-1, hidden.shape[-1])[lay.gather], lay.targets

    def score_batch(self, items: list, sketch: bool = True) -> dict:
        """Per-record sums by name (``columns.STAT_SUMS``: ``n_tokens, nll, brier, entropy, rank_clipped,
        brier_topk, entropy_topk``, the last two NaN without top-K) for a list of ``Tokenized`` records with
        status ok; with a sketcher (and ``sketch``) also ``sketch`` [S, dim] fp32, ``grad_norm_sq`` and
        (exact mode) ``grad_norm_sq_exact``."""
        if self.sketcher is not None and sketch:  # per-trajectory gradients: no shared activations
            return self._score_and_sketch(self.layout(items))
        lay = self.layout(items, share_prefixes=True)
        with torch.inference_mode(), eval_mode(self.model):
            hidden, targets = self.head_inputs(lay)
            seg = self.head.stats(hidden, targets, lay.cu_scored, self.topk, self.backend).segments
        return self._sums(seg, len(items))

    @staticmethod
    def _sums(seg, n: int) -> dict:
        """The op's per-segment sums by name (``columns.STAT_SUMS``); NaN for those it did not compute."""
        out = {}
        for f in dataclasses.fields(seg):
            x = getattr(seg, f.name)
            out[f.name] = x.cpu().numpy() if x is not None else np.full(n, np.nan)
        return out

    def _score_and_sketch(self, lay: Layout) -> dict:
        """The statistics plus gradient sketches of each trajectory's mean nll (``lark_fast.sketch``):
        one forward with the layers hooked and, unless only the head is sketched, one backward with
        every parameter frozen. The backward is that of sum_t nll_t (weight 1 per token, so that fp16
        gradients keep their range, as loss scaling does); trajectories never interact, so trajectory
        k's gradient of L_k = its summed nll / n_k is its sketch / n_k (and its exact norm / n_k^2)."""
        sk = self.sketcher
        backward = sk.needs_backward
        grad_mode = contextlib.ExitStack()
        grad_mode.enter_context(frozen(self.model) if backward else torch.inference_mode())
        if backward:
            grad_mode.enter_context(torch.enable_grad())
        with grad_mode, eval_mode(self.model):
            with sk.capture(lay.cu_full, self.device) as cap:
                hidden, targets = self.head_inputs(lay)
            counts = (lay.cu_scored[1:] - lay.cu_scored[:-1]).long()
            head = sk.head is not None
            stats = self.head.stats(hidden, targets, lay.cu_scored, self.topk, self.backend,
                                    sketch_dim=sk.k if head else 0, sketch_key=sk.head_key() if head else 0)
            if backward:
                stats.nll.sum().backward()
            if head:
                h = hidden.detach()
                deltas = None
                if sk.exact:
                    deltas = (d for *_, d in output_grad_chunks(
                        h, self.head.weight, targets, stats.lse, torch.ones(len(h), device=self.device),
                        token_block=max(1, len(h)), **self.head.transform))
                cap.add_head(h, stats.sketch, lay.cu_scored.tolist(), deltas)
            cap.check()
        out = self._sums(stats.segments, len(counts))
        per_token = 1.0 / counts.clamp(min=1).to(cap.sketches.dtype)  # d L_k / d nll_t
        flat = cap.sketches.reshape(len(counts), -1) * per_token[:, None]
        out["grad_norm_sq"] = flat.double().square().sum(1).cpu().numpy()
        out["sketch"] = flat.cpu().numpy()
        if cap.exact is not None:
            out["grad_norm_sq_exact"] = (cap.exact * per_token.double() ** 2).cpu().numpy()
        return out
