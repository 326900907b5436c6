"""Scoring: the student runs to the input of its LM head, then the fused statistics op does the rest.

The model is never asked for logits: a pre-hook on its output embeddings captures the LM head's
input and stops the forward there. Logits are z = softcap(logit_scale * (W h + b)) with W, b the
output embeddings and the scale / soft-cap the architecture applies after them (Gemma's
``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``logits_scaling``); the first
batch checks this against the model's own logits, so an architecture with another head fails loudly
instead of scoring wrong.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch

from . import attention, chat, ops
from .checkpoint import COLUMNS, SKETCH_INDEX, RunDirectory, SketchRows, concat, quantize, with_sketch_index, \
    write_sketches
from .dist import Shard
from .kernels.lm_head_backward import output_grad_chunks
from .methods import EXTRA, METHODS, SKETCH, answer_only, is_ok, random_scores, step_windows
from .dist import barrier as dist_barrier
from .packing import pack_ffd, packed_row
from .pool import PoolReader
from .scores import L_FLOOR, lark_energy, lark_energy_grad, trajectory_scores
from .sketch import GradientSketcher, frozen
from .table import ScoreTable


@dataclass
class LMHead:
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    logit_scale: float
    softcap: Optional[float]
    module: torch.nn.Module

    @classmethod
    def from_model(cls, model) -> "LMHead":
        module = model.get_output_embeddings()
        if module is None or getattr(module, "weight", None) is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings with a weight; "
                             "lark_fast needs a causal LM with an LM head")
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        scale = 1.0
        if getattr(cfg, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
            scale *= float(cfg.logit_scale)
        if getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
            scale /= float(cfg.logits_scaling)
        softcap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3: c tanh(z / c)
        return cls(module.weight, getattr(module, "bias", None), scale, float(softcap) if softcap else None, module)

    def stats(self, hidden, targets, cu_seqlens=None, topk=0, backend="auto", sketch_dim=0,
              sketch_key=0) -> ops.LMHeadStats:
        return ops.lm_head_stats(hidden, self.weight, targets, bias=self.bias, logit_scale=self.logit_scale,
                                 softcap=self.softcap, cu_seqlens=cu_seqlens, topk=topk, sketch_dim=sketch_dim,
                                 sketch_key=sketch_key, backend=backend)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Materialised logits, fp32; only for checking a handful of positions."""
        z = hidden.float() @ self.weight.float().T
        if self.bias is not None:
            z = z + self.bias.float()
        z = z * self.logit_scale
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)


class _HeadInput(Exception):
    def __init__(self, hidden):
        super().__init__("LM head input captured")
        self.hidden = hidden


def hidden_before_head(model, head: LMHead, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
    """The LM head's input [B, T, d] for a batch, without computing any logits (with its autograd
    graph when grad mode is on and something upstream requires grad)."""
    def stop(_module, args):
        raise _HeadInput(args[0])

    kwargs = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    handle = head.module.register_forward_pre_hook(stop)
    try:
        model(**kwargs)
    except _HeadInput as captured:
        return captured.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"{type(model).__name__} finished its forward without calling its output embeddings")


def verify_lm_head(model, head: LMHead, input_ids: torch.Tensor) -> torch.Tensor:
    """Compares the head's logits with the model's own on a short sequence (one forward); raises if
    they differ. Returns the head's input [1, T, d]."""
    ids = input_ids[:, :16]
    captured = []
    handle = head.module.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        theirs = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        handle.remove()
    hidden = captured[0]
    ours = head.logits(hidden)
    if ours.shape != theirs.shape:
        raise RuntimeError(f"{type(model).__name__}: the model's logits have shape {tuple(theirs.shape)}, "
                           f"its output embeddings give {tuple(ours.shape)}; unsupported LM head")
    err = (ours - theirs).abs().max().item()
    tol = (1e-3 if hidden.dtype == torch.float32 else 5e-2) * max(1.0, theirs.abs().max().item())
    if not err <= tol:
        raise RuntimeError(f"{type(model).__name__}: logits from its output embeddings differ from the model's "
                           f"own by {err:.3g} (tolerance {tol:.3g}); the architecture transforms logits in a way "
                           "lark_fast does not know (scale/soft-cap), so its scores would be wrong")
    return hidden


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and ("out of memory" in str(e) or
                                                                  "can't allocate memory" in str(e)))


class Scorer:
    """Scores batches of tokenised records with one model; reusable across pools.

    At construction, a self-check on two short random sequences (three small forwards) verifies that
    the LM head reproduces the model's own logits (``verify_head``) and, with ``packing="auto"``, that a
    packed forward with segment-wise attention equals separate ones; otherwise (or with "off") batches
    are right-padded. ``backend`` chooses the LM-head statistics'
    implementation (``ops.lm_head_stats``); None reads $LARK_FAST_BACKEND, default "auto".

    ``sketch_dim=k`` adds per-trajectory gradient sketches (``lark_fast.sketch``) of the layers
    ``sketch_layers`` (default: every nn.Linear / Conv1D and the LM head) with projections seeded by
    ``sketch_seed``; ``exact_grad_norm`` also computes the exact squared gradient norms.
    """

    def __init__(self, model, tokenizer, *, max_length: Optional[int] = None, topk: int = 50,
                 chat_template: Optional[str] = None, verify_head: bool = True, packing: str = "auto",
                 backend: Optional[str] = None, sketch_dim: Optional[int] = None, sketch_layers=None,
                 sketch_seed: int = 0, exact_grad_norm: bool = False):
        if packing not in ("auto", "off"):
            raise ValueError(f"packing: expected 'auto' or 'off', got {packing!r}")
        self.backend = backend or os.environ.get("LARK_FAST_BACKEND", "auto")
        self.model = model
        self.head = LMHead.from_model(model)
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if max_length is None:
            max_length = getattr(cfg, "max_position_embeddings", None)
        self.chat = chat.ChatTokenizer(tokenizer, max_length=max_length, chat_template=chat_template)
        self.topk = topk
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = self.head.weight.device
        self.vocab_size = self.head.weight.shape[0]
        self.packed = self._self_check(verify_head, packing == "auto")
        if exact_grad_norm and sketch_dim is None:
            raise ValueError("exact_grad_norm: validates the sketches, so it needs sketch_dim")
        self.sketcher = None if sketch_dim is None else GradientSketcher(
            model, self.head.module, sketch_dim, seed=sketch_seed, layers=sketch_layers, exact=exact_grad_norm)

    def _self_check(self, verify_head: bool, packing: bool) -> bool:
        """Verifies the head (raises) and tells whether packing reproduces separate forwards."""
        g = torch.Generator().manual_seed(0)
        seqs = [torch.randint(0, self.vocab_size, (n,), generator=g).tolist() for n in (9, 5)]
        with torch.inference_mode(), _eval_mode(self.model):
            first = torch.tensor([seqs[0]], device=self.device)
            if verify_head:
                alone = [verify_lm_head(self.model, self.head, first)[0]]
            if not packing:
                return False
            if not verify_head:
                alone = [hidden_before_head(self.model, self.head, first)[0]]
            alone.append(hidden_before_head(self.model, self.head, torch.tensor([seqs[1]], device=self.device))[0])
        try:
            with torch.inference_mode(), _eval_mode(self.model):
                ids, pos, cu = packed_row(seqs, self.device)
                with attention.packed_attention(self.model), attention.segments(cu.tolist()):
                    packed = hidden_before_head(self.model, self.head, ids, position_ids=pos)[0]
        except RuntimeError as e:
            warnings.warn(f"packing unavailable for {type(self.model).__name__} ({e}); using padded batches")
            return False
        ref = torch.cat(alone).float()
        err = (packed.float() - ref).abs().max().item()
        tol = (1e-4 if ref.dtype == torch.float32 and packed.dtype == torch.float32 else 3e-2) * \
            max(1.0, ref.abs().max().item())
        if not err <= tol:
            warnings.warn(f"{type(self.model).__name__}: a packed forward differs from separate ones by {err:.3g}; "
                          "using padded batches")
            return False
        return True

    def _layout(self, items: list) -> _Layout:
        lengths = [len(t.input_ids) for t in items]
        if self.packed:
            ids, pos, cu = packed_row([t.input_ids for t in items], self.device)
            cu_full, mask, starts = cu.tolist(), None, cu[:-1].tolist()
        else:
            width = max(lengths)
            ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, t in enumerate(items):
                ids[i, : lengths[i]] = torch.tensor(t.input_ids)
                mask[i, : lengths[i]] = 1
            ids, mask, pos = ids.to(self.device), mask.to(self.device), None
            cu_full = [i * width for i in range(len(items) + 1)]  # row i starts at i * T once flattened
            starts = cu_full[:-1]
        # token t of a record is predicted from position t - 1
        gather = torch.cat([torch.arange(s + t.start - 1, s + n - 1) for s, t, n in zip(starts, items, lengths)])
        counts = torch.tensor([0] + [n - t.start for t, n in zip(items, lengths)])
        cu_scored = counts.cumsum(0).to(device=self.device, dtype=torch.int32)
        return _Layout(ids, pos, mask, cu_full, gather.to(self.device), cu_scored)

    def _hidden(self, lay: _Layout) -> tuple:
        """Head inputs at the scored positions [N, d] and their targets [N]."""
        if self.packed:
            with attention.packed_attention(self.model), attention.segments(lay.cu_full):
                hidden = hidden_before_head(self.model, self.head, lay.ids, position_ids=lay.position_ids)
        else:
            hidden = hidden_before_head(self.model, self.head, lay.ids, lay.mask)
        hidden, ids = hidden.reshape(-1, hidden.shape[-1]), lay.ids.reshape(-1)
        return hidden[lay.gather], ids[lay.gather + 1]

    def score_batch(self, items: list, sketch: bool = True) -> dict:
        """Per-record float64 sums (``n_tokens, nll, brier, entropy, rank_clipped, brier_topk,
        entropy_topk``; the last two NaN without top-K) for a list of ``Tokenized`` records with status
        ok; with a sketcher (and ``sketch``) also ``sketch`` [S, dim] fp32, ``grad_norm_sq`` and (exact
        mode) ``grad_norm_sq_exact``."""
        lay = self._layout(items)
        if self.sketcher is not None and sketch:
            return self._score_and_sketch(lay)
        with torch.inference_mode(), _eval_mode(self.model):
            hidden, targets = self._hidden(lay)
            seg = self.head.stats(hidden, targets, lay.cu_scored, self.topk, self.backend).segments
        return self._sums(seg, len(items))

    def _sums(self, seg, n: int) -> dict:
        out = {name: getattr(seg, name).cpu().numpy() for name in ("n_tokens", "nll", "brier", "entropy", "rank_clipped")}
        for name in ("brier_topk", "entropy_topk"):
            x = getattr(seg, name)
            out[name] = x.cpu().numpy() if x is not None else np.full(n, np.nan)
        return out

    def _score_and_sketch(self, lay: _Layout) -> dict:
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
        with grad_mode, _eval_mode(self.model):
            with sk.capture(lay.cu_full, self.device) as cap:
                hidden, targets = self._hidden(lay)
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
                        bias=self.head.bias, logit_scale=self.head.logit_scale, softcap=self.head.softcap,
                        token_block=max(1, len(h))))
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


@dataclass
class _Layout:
    """One batch's token layout: ``ids`` [B, T], ``position_ids`` (packed) or ``mask`` (padded),
    ``cu_full`` (python ints: every position, one segment per record), ``gather`` (the positions
    that predict the scored tokens) and ``cu_scored`` (int32: scored tokens per record)."""

    ids: torch.Tensor
    position_ids: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    cu_full: list
    gather: torch.Tensor
    cu_scored: torch.Tensor


class _Results:
    """Per-record rows of one process, flushed to the run directory in parts (or kept in memory);
    with ``sketch_dim``, each row's sketch too (float16, see ``checkpoint.quantize``)."""

    SUMS = ("nll", "brier", "entropy", "rank_clipped", "brier_topk", "entropy_topk", "ifd_nll", "ifd_n", "local_nll",
            "local_n", "grad_norm_sq", "grad_norm_sq_exact", "sketch_scale")

    def __init__(self, run_dir: Optional[RunDirectory], every_records: int, every_seconds: float,
                 sketch_dim: Optional[int] = None):
        self.run_dir = run_dir
        self.sketch_dim = sketch_dim
        self.sketches: list = []
        self.blocks: list = []  # in memory: each flushed chunk's float16 sketches
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.rows: list = []
        self.chunks: list = []
        self.last_flush = time.monotonic()

    def add(self, ordinal: int, rec, tok, sums: Optional[dict] = None, status: Optional[str] = None,
            reason: Optional[str] = None) -> None:
        s = dict(sums or {})
        if self.sketch_dim is not None:
            sketch = s.pop("sketch", None)
            unit, scale = quantize(np.zeros((1, self.sketch_dim), np.float32) if sketch is None else sketch[None])
            self.sketches.append(unit[0])
            s["sketch_scale"] = scale[0]
        self.rows.append((ordinal, rec.problem_id, rec.candidate_id, rec.teacher, tok.truncated,
                          status or tok.status, reason if reason is not None else tok.reason,
                          int(s.get("n_tokens", 0)), *(float(s.get(k, np.nan)) for k in self.SUMS)))
        if len(self.rows) >= self.every_records or time.monotonic() - self.last_flush >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            cols = {k: np.array(v, dtype=t) for (k, t), v in zip(COLUMNS.items(), zip(*self.rows))}
            block = np.stack(self.sketches) if self.sketch_dim is not None else None
            if self.run_dir is not None:
                self.run_dir.write_part(cols, block)
            elif block is not None:
                self.chunks.append(with_sketch_index(cols, len(self.blocks)))
                self.blocks.append(block)
            else:
                self.chunks.append(cols)
            self.rows, self.sketches = [], []
        self.last_flush = time.monotonic()


class _Pending:
    """A record whose forwards (its own, and those of ifd / local_naturalness) are not all scored yet."""

    def __init__(self, rec, tok, n_items: int):
        self.rec, self.tok, self.left = rec, tok, n_items
        self.sums: dict = {}
        self.status, self.reason = None, None


def _read_and_tokenize(reader, scorer: Scorer, shard: Shard, done: set, extra: tuple, out: queue.Queue) -> None:
    """Background worker: (ordinal, record, [(kind, Tokenized), ...]) of this shard, in order; then None.

    The first item is the record itself; ``extra`` methods add the forwards they need.
    """
    try:
        for ordinal, rec in enumerate(reader):
            if not shard.owns(ordinal) or ordinal in done:
                continue
            tok = scorer.chat(rec.messages)
            items = [("main", tok)]
            if tok.status == chat.OK:
                if "ifd" in extra:
                    items.append(("ifd", answer_only(scorer.chat, rec.messages, tok)))
                if "local_naturalness" in extra:
                    items += [("local", w) for w in step_windows(scorer.chat, rec.messages, tok)]
            out.put((ordinal, rec, [(k, t) for k, t in items if k == "main" or is_ok(t)]))
        out.put(None)
    except BaseException as e:  # handed to the consumer, which re-raises it
        out.put(e)


def score(model, tokenizer, records: Union[str, Iterable[dict]], *, max_length: Optional[int] = None,
          max_tokens_per_batch: int = 8192, batch_size: Optional[int] = None, topk: int = 50,
          methods: Iterable[str] = (), random_seed: int = 0, on_error: str = "skip",
          chat_template: Optional[str] = None, progress: bool = True, verify_head: bool = True,
          packing: str = "auto", backend: Optional[str] = None, run_dir=None, overwrite: bool = False,
          checkpoint_every: int = 2000, shard: Optional[Shard] = None, sketch_dim: Optional[int] = None,
          sketch_layers=None, sketch_seed: int = 0, exact_grad_norm: bool = False, save_sketches=None) -> ScoreTable:
    """Scores every record of a pool with the student ``model`` (SPEC §3).

    ``records``: a ``.jsonl``/``.parquet`` path or an iterable of dicts (SPEC §7). Returns one row
    per record read, in input order, with columns ``problem_id, candidate_id, teacher, n_tokens,
    truncated, status, L, brier, rho, g_hat, entropy, rsr, global_naturalness, brier_top{topk}, topk_entropy,
    reason`` and one more per requested method of ``lark_fast.methods`` that is not computed in the
    fused pass (``random``, ``ifd``, ``local_naturalness``). Records that cannot be read are in
    ``table.issues``; read but unscorable ones have a status other than ``ok`` and NaN scores.
    ``max_length`` (default: the model's context) truncates, flagged.

    Trajectories are packed into forwards of at most ``max_tokens_per_batch`` tokens (a longer one
    goes alone) and ``batch_size`` trajectories. ``backend`` picks the LM-head statistics'
    implementation ("auto": the Triton kernel on CUDA, the chunked torch path on CPU; None reads
    $LARK_FAST_BACKEND). With ``run_dir``, results are flushed there in parts
    every ``checkpoint_every`` records (and every 2 minutes); a later call with the same settings
    resumes, scoring only what is missing. ``shard`` (torchrun) splits the pool across processes,
    which then need a shared ``run_dir``; every process returns the merged table.

    Gradient sketches (SPEC §4, ``lark_fast.sketch``): ``sketch_dim=k`` adds one activation-gradient
    backward per batch (none when ``sketch_layers="head"``) and the columns ``grad_norm_sq`` (sketch
    estimate of ||grad_theta L_k||^2 over the sketched layers, L_k the trajectory's mean nll),
    ``rho_grad`` = grad_norm_sq / L, ``kappa`` = grad_norm_sq / brier and ``g_hat_grad`` (the
    gradient-aware LARK score, from each problem's Gram matrix of sketches); ``exact_grad_norm``
    adds ``grad_norm_sq_exact`` (validation; slow, memory-hungry). ``sketch_layers``: None = every
    nn.Linear / Conv1D and the LM head, "head", an int (the last n blocks and the head) or a regex
    of module names; ``sketch_seed`` seeds the projections. ``save_sketches=DIR`` writes
    ``sketches.npy`` (float16 [rows, dim], table order, each row scaled to max |entry| 1),
    ``scales.npy`` (the scales) and ``sketches.json`` (layers and layout).
    """
    shard = shard or Shard()
    wanted = tuple(sorted(set(methods)))
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    extra = tuple(m for m in wanted if METHODS[m].cost == EXTRA)
    needs_sketch = [m for m in wanted if METHODS[m].cost == SKETCH]
    if needs_sketch and sketch_dim is None:
        raise ValueError(f"methods: {', '.join(needs_sketch)} need gradient sketches; pass sketch_dim (--sketch-dim)")
    if save_sketches is not None and sketch_dim is None:
        raise ValueError("save_sketches: needs sketch_dim")
    if max_tokens_per_batch < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError("max_tokens_per_batch and batch_size must be >= 1")
    if shard.world > 1 and run_dir is None:
        raise ValueError("run_dir: required when scoring with several processes")
    scorer = Scorer(model, tokenizer, max_length=max_length, topk=topk, chat_template=chat_template,
                    verify_head=verify_head, packing=packing, backend=backend, sketch_dim=sketch_dim,
                    sketch_layers=sketch_layers, sketch_seed=sketch_seed, exact_grad_norm=exact_grad_norm)
    sketcher = scorer.sketcher
    reader = PoolReader(records, on_error=on_error)
    store = None
    if run_dir is not None:
        fingerprint = {"pool": _describe_source(reader), "model": _describe_model(model), "topk": topk,
                       "max_length": scorer.chat.max_length, "chat_template": chat_template or "",
                       "extra_methods": list(extra), "lark_fast": __import__("lark_fast").__version__,
                       "sketch": sketcher.describe() if sketcher is not None else None}
        if shard.rank == 0:
            store = RunDirectory(run_dir, fingerprint, 0, overwrite)
        dist_barrier(shard)
        if shard.rank != 0:
            store = RunDirectory(run_dir, fingerprint, shard.rank, overwrite=False)
    done = set(store.load()["ordinal"].tolist()) if store is not None else set()
    results = _Results(store, checkpoint_every, 120.0, sketcher.dim if sketcher is not None else None)
    if not scorer.packed and batch_size is None:
        batch_size = 8

    total = reader.count()
    from tqdm.auto import tqdm
    bar = tqdm(total=None if total is None else max(0, -(-total // shard.world) - len(done)), unit="rec",
               desc="scoring" if shard.world == 1 else f"scoring (rank {shard.rank})", disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    n_tokens = forward_tokens = 0
    pending: dict = {}

    def finish(ordinal: int, kind: str, sums: Optional[dict], tok) -> None:
        """Books one scored forward of a record; a record is written once all its forwards are in."""
        nonlocal n_tokens
        p = pending[ordinal]
        if kind == "main":
            if sums is None:
                p.status = chat.OUT_OF_MEMORY
                p.reason = f"does not fit in memory even alone ({len(tok.input_ids)} tokens); lower --max-length"
            else:
                p.sums.update(sums)
                n_tokens += int(sums["n_tokens"])
        elif sums is not None:
            for name in ("nll", "n"):
                key = f"{kind}_{name}"
                p.sums[key] = p.sums.get(key, 0.0) + (sums["nll"] if name == "nll" else sums["n_tokens"])
        else:
            p.sums[f"{kind}_n"] = np.nan  # the method's value is lost for this record, not the record
        p.left -= 1
        if p.left == 0:
            results.add(ordinal, p.rec, p.tok, p.sums, status=p.status, reason=p.reason)
            del pending[ordinal]
            bar.update(1)

    def run(batch: list) -> None:
        """Scores (ordinal, kind, Tokenized) items of one kind; on out-of-memory splits the batch and
        retries. Only the main forwards are sketched (the extra methods need their nll alone)."""
        nonlocal forward_tokens
        try:
            sums = scorer.score_batch([t for _, _, t in batch], sketch=batch[0][1] == "main")
        except Exception as e:
            if not _is_oom(e):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) > 1:
                half = len(batch) // 2
                run(batch[:half])
                run(batch[half:])
            else:
                finish(batch[0][0], batch[0][1], None, batch[0][2])
            return
        forward_tokens += sum(len(t.input_ids) for _, _, t in batch)
        for j, (ordinal, kind, tok) in enumerate(batch):
            finish(ordinal, kind, {k: v[j] for k, v in sums.items()}, tok)
        bar.set_postfix(tok_s=f"{n_tokens / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)

    def flush_window(window: list) -> None:
        for group in ([w for w in window if w[1] == "main"], [w for w in window if w[1] != "main"]):
            for row in pack_ffd([len(t.input_ids) for _, _, t in group], max_tokens_per_batch, batch_size):
                run([group[i] for i in row])

    items: queue.Queue = queue.Queue(maxsize=4096)
    worker = threading.Thread(target=_read_and_tokenize, args=(reader, scorer, shard, done, extra, items),
                              daemon=True)
    worker.start()
    window, window_tokens = [], 0
    try:
        while True:
            item = items.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            ordinal, rec, forwards = item
            tok = forwards[0][1]
            if tok.status != chat.OK:
                results.add(ordinal, rec, tok)
                bar.update(1)
                continue
            pending[ordinal] = _Pending(rec, tok, len(forwards))
            for kind, t in forwards:
                window.append((ordinal, kind, t))
                window_tokens += len(t.input_ids)
            if window_tokens >= 4 * max_tokens_per_batch:
                flush_window(window)
                window, window_tokens = [], 0
        flush_window(window)
        results.flush()
    finally:
        bar.close()
    worker.join()
    seconds = time.perf_counter() - t0

    dist_barrier(shard)  # every rank's parts are written
    cols = store.load() if store is not None else concat(results.chunks)
    dist_barrier(shard)  # every rank has read them (rank 0 may delete them next)
    order = np.argsort(cols["ordinal"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    sketches = None
    if sketcher is not None:
        blocks = store.sketch_blocks if store is not None else results.blocks
        index = [cols.get(k, np.zeros(0, np.int64)) for k in SKETCH_INDEX]
        sketches = SketchRows(blocks, *index, cols["sketch_scale"])
    missing = sorted(set(range(reader.n_valid)) - set(cols["ordinal"].tolist()))
    if missing:
        raise RuntimeError(f"{len(missing)} records have no result (first ordinals {missing[:5]}); "
                           "a process probably died: run the same command again to finish")
    info = {"seconds": seconds, "scored_tokens_this_run": n_tokens, "forward_tokens": forward_tokens,
            "records_read": reader.n_valid,
            "records_resumed": len(done), "max_length": scorer.chat.max_length, "topk": topk,
            "max_tokens_per_batch": max_tokens_per_batch, "packed": scorer.packed, "world_size": shard.world,
            "methods": list(wanted), "random_seed": random_seed, "model": type(model).__name__,
            "corrupt_parts_redone": store.problems if store is not None else [],
            "sketch": sketcher.describe() if sketcher is not None else None}
    table = build_table(cols, topk, reader.issues, info, wanted, random_seed, sketches, exact_grad_norm)
    if save_sketches is not None and shard.rank == 0:
        write_sketches(save_sketches, sketches, sketcher.dim, {**sketcher.describe(), "rows": len(table)})
    return table


def build_table(cols: dict, topk: int, issues: list, info: dict, wanted: tuple = (), random_seed: int = 0,
                sketches: Optional[SketchRows] = None, exact_grad_norm: bool = False) -> ScoreTable:
    """The score table from per-record sums (SPEC §3): per-trajectory means, then g_hat per problem,
    then the columns of the requested extra methods, then (with ``sketches``) the gradient columns
    of SPEC §4."""
    per = trajectory_scores(cols["n_tokens"], cols["nll"], cols["brier"], cols["entropy"], cols["rank_clipped"],
                            cols["brier_topk"] if topk else None)
    status = cols["status"].copy()
    reason = cols["reason"].copy()
    scored = status == chat.OK
    finite = np.isfinite(per["L"]) & np.isfinite(per["brier"]) & np.isfinite(per["entropy"])
    bad = scored & ~finite
    status[bad] = chat.NONFINITE
    reason[bad] = "the student produced non-finite statistics (NaN/inf hidden states or logits)"
    ok = status == chat.OK
    for k in per:
        per[k] = np.where(ok, per[k], np.nan)
    columns = {
        "problem_id": cols["problem_id"], "candidate_id": cols["candidate_id"], "teacher": cols["teacher"],
        "n_tokens": np.where(ok, cols["n_tokens"], 0), "truncated": cols["truncated"], "status": status,
        "L": per["L"], "brier": per["brier"], "rho": per["rho"],
        "g_hat": lark_energy(cols["problem_id"], per["L"], per["brier"], ok),
        "entropy": per["entropy"], "rsr": per["rsr"], "global_naturalness": -per["L"],
    }
    if topk:
        columns[f"brier_top{topk}"] = per["brier_topk"]
        with np.errstate(divide="ignore", invalid="ignore"):
            columns["topk_entropy"] = np.where(ok, cols["entropy_topk"] / cols["n_tokens"], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        if "random" in wanted:
            columns["random"] = random_scores(cols["problem_id"], cols["candidate_id"], random_seed)
        if "ifd" in wanted:
            columns["ifd"] = np.where(ok & (cols["ifd_n"] > 0), per["L"] / (cols["ifd_nll"] / cols["ifd_n"]), np.nan)
        if "local_naturalness" in wanted:
            columns["local_naturalness"] = np.where(ok & (cols["local_n"] > 0), -cols["local_nll"] / cols["local_n"],
                                                    np.nan)
        if sketches is not None:
            columns.update(_gradient_columns(cols, per, ok, sketches, exact_grad_norm))
    columns["reason"] = reason
    info = {**info, "scored_tokens": int(columns["n_tokens"].sum())}
    return ScoreTable(columns, issues=issues, info=info)


def _gradient_columns(cols: dict, per: dict, ok: np.ndarray, sketches: SketchRows, exact: bool) -> dict:
    """grad_norm_sq, rho_grad, kappa, g_hat_grad (+ grad_norm_sq_exact). The Gram matrix of a problem
    takes its off-diagonal entries from the stored float16 sketches and its diagonal from
    grad_norm_sq (summed in float64 before rounding)."""
    g = np.where(ok, cols["grad_norm_sq"], np.nan)
    L = per["L"]

    def gram_of(idx):
        s = sketches.get(idx)
        gram = s @ s.T
        np.fill_diagonal(gram, g[idx])
        return gram

    out = {"grad_norm_sq": g,
           "rho_grad": np.where(L > L_FLOOR, g / L, np.where(np.isnan(L), np.nan, 0.0)),
           "kappa": np.where(per["brier"] > 0, g / np.where(per["brier"] > 0, per["brier"], 1), np.nan),
           "g_hat_grad": lark_energy_grad(cols["problem_id"], L, ok & np.isfinite(g), gram_of)}
    if exact:
        out["grad_norm_sq_exact"] = np.where(ok, cols["grad_norm_sq_exact"], np.nan)
    return out


def _describe_source(reader) -> dict:
    if reader.format == "records":
        return {"name": reader.name}
    st = Path(reader.name).stat()
    return {"path": str(Path(reader.name).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _describe_model(model) -> dict:
    p = model.get_output_embeddings().weight
    return {"class": type(model).__name__, "name": getattr(model.config, "_name_or_path", ""),
            "n_parameters": sum(x.numel() for x in model.parameters()), "dtype": str(p.dtype),
            "head_checksum": float(p.float().sum().item())}
