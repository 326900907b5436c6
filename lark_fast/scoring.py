"""Scoring a pool: ``score`` and the run behind it (docs/method.md §3).

``score`` validates its options (and, with ``on_error="fail"``, the whole pool), builds the ``Scorer``,
locks and opens the run directory (settings fingerprint, resume), runs a ``ScoringRun``, merges every
process's parts and builds the score table (``build_table``). A ``ScoringRun`` is one process's share of the work:

- a background thread reads and tokenises the pool (this shard's records not already done) and,
  for each record, the forwards the requested methods need (``Method.forwards``);
- the main thread collects forwards into a window, packs the window into batches of at most
  ``max_tokens_per_batch`` tokens (first-fit decreasing), scores each batch with the ``Scorer`` and,
  when a batch runs out of memory, scores its halves instead;
- a record is booked once all its forwards are in (``RecordRows``), and rows are flushed to the run
  directory every ``checkpoint_every`` records and every 2 minutes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
import time
from typing import Iterable, Optional, Union

import numpy as np
import torch

from . import chat
from .checkpoint import SKETCH_INDEX, RunDirectory, SketchRows, concat, quantize, with_sketch_index, write_sketches
from .columns import to_columns
from .dist import Shard
from .dist import barrier as dist_barrier
from .fingerprint import file_sha256
from .methods import EXTRA, FUSED, METHODS, SKETCH, RunSums, is_ok
from .pool import PoolReader
from .runlock import RunLock
from .scorer import Scorer
from .scores import L_FLOOR, check_compat, lark_energy_grad, trajectory_scores
from .shards import ShardPlan, parse_shard, plan_shards, reusable_part, write_part
from .table import ScoreTable

MAIN = "main"  # the kind of a record's own forward; extra forwards are named by their method
WINDOW_TOKENS = 1 << 15  # forwards collected before packing: whole problems, so that they share their prompt


def is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and ("out of memory" in str(e) or
                                                                  "can't allocate memory" in str(e)))


class RecordRows:
    """Per-record rows of one process (dicts keyed by ``columns.COLUMNS``), flushed to the run directory
    in parts (or kept in memory); with ``sketch_dim``, each row's sketch too (float16, see
    ``checkpoint.quantize``)."""

    def __init__(self, run_dir: Optional[RunDirectory], every_records: int, every_seconds: float,
                 sketch_dim: Optional[int] = None):
        self.run_dir = run_dir
        self.sketch_dim = sketch_dim
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.rows: list = []
        self.sketches: list = []
        self.chunks: list = []  # in memory: each flushed chunk's columns
        self.blocks: list = []  # in memory: each flushed chunk's float16 sketches
        self.last_flush = time.monotonic()

    def add(self, ordinal: int, rec, tok, sums: Optional[dict] = None, status: Optional[str] = None,
            reason: Optional[str] = None) -> None:
        row = dict(sums or {})
        if self.sketch_dim is not None:
            sketch = row.pop("sketch", None)
            unit, scale = quantize(np.zeros((1, self.sketch_dim), np.float32) if sketch is None else sketch[None])
            self.sketches.append(unit[0])
            row["sketch_scale"] = scale[0]
        row.update(ordinal=ordinal, problem_id=rec.problem_id, candidate_id=rec.candidate_id, teacher=rec.teacher,
                   content_hash=rec.content_hash, truncated=tok.truncated, status=status or tok.status,
                   reason=reason if reason is not None else tok.reason)
        self.rows.append(row)
        if len(self.rows) >= self.every_records or time.monotonic() - self.last_flush >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            cols = to_columns(self.rows)
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
    """A record whose forwards (its own, and those of the extra methods) are not all scored yet."""

    def __init__(self, rec, tok, n_forwards: int):
        self.rec, self.tok, self.left = rec, tok, n_forwards
        self.sums: dict = {}
        self.status, self.reason = None, None


class ScoringRun:
    """One process's scoring of its shard: see the module docstring. ``run()`` returns when every record
    of the shard is booked in ``rows``; ``n_tokens`` (scored) and ``forward_tokens`` count this run."""

    def __init__(self, scorer: Scorer, reader: PoolReader, rows: RecordRows, *, index: int, plan: Optional[ShardPlan],
                 done: set, extra: tuple, max_tokens_per_batch: int, batch_size: Optional[int], progress: bool):
        self.scorer, self.reader, self.rows = scorer, reader, rows
        self.index, self.plan, self.done, self.extra = index, plan, done, extra
        self.max_tokens_per_batch, self.batch_size = max_tokens_per_batch, batch_size
        self.progress = progress
        self.pending: dict = {}
        self.n_tokens = self.forward_tokens = 0
        self.seconds = 0.0

    def run(self) -> None:
        from tqdm.auto import tqdm

        total = self.reader.count() if self.plan is None else len(self.plan.ordinals(self.index))
        self.bar = tqdm(total=None if total is None else max(0, total - len(self.done)), unit="rec",
                        desc="scoring" if self.plan is None else f"scoring (shard {self.index}/{self.plan.count})",
                        disable=not self.progress, dynamic_ncols=True)
        self.t0 = time.perf_counter()
        items: queue.Queue = queue.Queue(maxsize=4096)
        worker = threading.Thread(target=self._read_and_tokenize, args=(items,), daemon=True)
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
                    self.rows.add(ordinal, rec, tok)
                    self.bar.update(1)
                    continue
                self.pending[ordinal] = _Pending(rec, tok, len(forwards))
                for kind, t in forwards:
                    window.append((ordinal, kind, t))
                    window_tokens += len(t.input_ids)
                if window_tokens >= max(4 * self.max_tokens_per_batch, WINDOW_TOKENS):
                    self._flush_window(window)
                    window, window_tokens = [], 0
            self._flush_window(window)
            self.rows.flush()
        finally:
            self.bar.close()
        worker.join()
        self.seconds = time.perf_counter() - self.t0

    def _read_and_tokenize(self, out: queue.Queue) -> None:
        """Background worker: (ordinal, record, [(kind, Tokenized), ...]) of this shard, in order; then
        None. The first forward is the record's own; each extra method adds those it needs."""
        try:
            chat_tok = self.scorer.chat
            for ordinal, rec in enumerate(self.reader):
                if (self.plan is not None and not self.plan.owns(self.index, ordinal)) or ordinal in self.done:
                    continue
                tok = chat_tok(rec.messages)
                forwards = [(MAIN, tok)]
                if tok.status == chat.OK:
                    for name in self.extra:
                        forwards += [(name, t) for t in METHODS[name].forwards(chat_tok, rec.messages, tok)
                                     if is_ok(t)]
                out.put((ordinal, rec, forwards))
            out.put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            out.put(e)

    def _flush_window(self, window: list) -> None:
        """Scores a window: the records' own forwards first, then the extra ones, each packed into batches."""
        sketching = self.scorer.sketcher is not None
        for group in ([w for w in window if w[1] == MAIN], [w for w in window if w[1] != MAIN]):
            share = not (sketching and group[:1] and group[0][1] == MAIN)
            for row in self.scorer.batches([t for _, _, t in group], self.max_tokens_per_batch, self.batch_size, share):
                self._score([group[i] for i in row])

    def _score(self, batch: list) -> None:
        """Scores (ordinal, kind, Tokenized) items of one kind; on out-of-memory scores the halves. Only
        the records' own forwards are sketched (the extra methods need their nll alone)."""
        try:
            sums = self.scorer.score_batch([t for _, _, t in batch], sketch=batch[0][1] == MAIN)
        except Exception as e:
            if not is_oom(e):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) > 1:
                half = len(batch) // 2
                self._score(batch[:half])
                self._score(batch[half:])
            else:
                self._book(batch[0][0], batch[0][1], None, batch[0][2])
            return
        self.forward_tokens += sum(len(t.input_ids) for _, _, t in batch)
        for j, (ordinal, kind, tok) in enumerate(batch):
            self._book(ordinal, kind, {k: v[j] for k, v in sums.items()}, tok)
        rate = self.n_tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(tok_s=f"{rate:.0f}", refresh=False)

    def _book(self, ordinal: int, kind: str, sums: Optional[dict], tok) -> None:
        """Books one scored forward of a record (``sums`` None: it did not fit in memory); a record is
        written once all its forwards are in."""
        p = self.pending[ordinal]
        if kind == MAIN:
            if sums is None:
                p.status = chat.OUT_OF_MEMORY
                p.reason = f"does not fit in memory even alone ({len(tok.input_ids)} tokens); lower --max-length"
            else:
                p.sums.update(sums)
                self.n_tokens += int(sums["n_tokens"])
        elif sums is not None:
            p.sums[f"{kind}_nll"] = p.sums.get(f"{kind}_nll", 0.0) + sums["nll"]
            p.sums[f"{kind}_n"] = p.sums.get(f"{kind}_n", 0.0) + sums["n_tokens"]
        else:
            p.sums[f"{kind}_n"] = np.nan  # the method's value is lost for this record, not the record
        p.left -= 1
        if p.left == 0:
            self.rows.add(ordinal, p.rec, p.tok, p.sums, status=p.status, reason=p.reason)
            del self.pending[ordinal]
            self.bar.update(1)


def default_batching(scorer: Scorer) -> tuple:
    """(max_tokens_per_batch, batch_size) for a scorer: packed rows of 8192 tokens, at most 8 trajectories
    per right-padded batch. On CUDA big rows keep the GPU busy; on CPU every packed budget from 512 to
    8192 tokens and one trajectory per forward cost the same within 4% (``benchmarks/bench_batching.py``:
    the forward is GEMM-bound; right-padded batches cost 16% more), and big rows let a problem's
    candidates share one forward of their prompt."""
    return 8192, None if scorer.packed else 8


def score(model, tokenizer, records: Union[str, Iterable[dict]], *, max_length: Optional[int] = None,
          max_tokens_per_batch: Optional[int] = None, batch_size: Optional[int] = None, topk: int = 50,
          methods: Iterable[str] = (), random_seed: int = 0, on_error: str = "skip",
          chat_template: Optional[str] = None, progress: bool = True, verify_head: bool = True,
          packing: str = "auto", backend: Optional[str] = None, run_dir=None, overwrite: bool = False,
          checkpoint_every: int = 2000, shard=None, part=None, sketch_dim: Optional[int] = None,
          sketch_layers=None, sketch_seed: int = 0, exact_grad_norm: bool = False, save_sketches=None,
          compat: str = "exact") -> ScoreTable:
    """Scores every record of a pool with the student ``model`` (docs/method.md §3).

    ``records``: a ``.jsonl``/``.parquet`` path, an iterable of dicts (docs/method.md §7) or a ``PoolReader``
    (which keeps its own ``on_error``). With ``on_error="fail"`` a file or a list is validated whole before
    any scoring. A pool without a valid record is a ValueError; a file that cannot be read to its end
    (a truncated ``.jsonl.gz``) gives the records read before the break, an issue at the last good line and
    ``table.info["complete"]`` False (under "fail": a PoolError). Returns one
    row per record read, in input order, with columns ``problem_id, candidate_id, teacher, n_tokens,
    truncated, status, L, brier``, then the columns of the fused-pass methods of ``lark_fast.methods``
    (``rho, g_hat, entropy, rsr, global_naturalness``, with top-K ``topk_entropy`` and
    ``brier_top{topk}``), one per requested method that is not (``random``, ``ifd``,
    ``local_naturalness``), and ``reason``. Records that cannot be read are in ``table.issues``; read but
    unscorable ones have a status other than ``ok`` and NaN scores. ``max_length`` (default: the model's
    context) truncates, flagged.

    Trajectories are packed into forwards of at most ``max_tokens_per_batch`` tokens (a longer one
    goes alone) and ``batch_size`` trajectories; None takes the device's default (``default_batching``). ``backend`` picks the LM-head statistics'
    implementation (``lark_fast.ops``; None reads $LARK_FAST_BACKEND, default "auto"). With ``run_dir``,
    results are flushed there in parts every ``checkpoint_every`` records (and every 2 minutes); a later
    call with the same settings resumes, scoring only what is missing, and one with other settings is refused
    (ValueError); while it runs the directory is locked (``runlock.RunLock``: a second run on it fails with
    ``RunLocked``). ``shard`` (torchrun) splits the
    pool across processes, which then need a shared ``run_dir``; every process returns the merged table.

    Gradient sketches (docs/method.md §4, ``lark_fast.sketch``): ``sketch_dim=k`` adds one
    activation-gradient backward per batch (none when ``sketch_layers="head"``) and the columns
    ``grad_norm_sq`` (sketch estimate of ||grad_theta L_k||^2 over the sketched layers, L_k the
    trajectory's mean nll), ``rho_grad`` = grad_norm_sq / L, ``kappa`` = grad_norm_sq / brier and
    ``g_hat_grad`` (the gradient-aware LARK score, from each problem's Gram matrix of sketches);
    ``exact_grad_norm`` adds ``grad_norm_sq_exact`` (validation; slow, memory-hungry). ``sketch_layers``:
    None = every nn.Linear / Conv1D and the LM head, "head", an int (the last n blocks and the head) or a
    regex of module names; ``sketch_seed`` seeds the projections. ``save_sketches=DIR`` writes
    ``sketches.npy`` (float16 [rows, dim], table order, each row scaled to max |entry| 1),
    ``scales.npy`` (the scales) and ``sketches.json`` (layers and layout).

    ``compat="published"`` reproduces the published scorer's numbers (docs/method.md §3.7): its
    tokenisation (``chat.PublishedChatTokenizer``), and ``rho``, ``g_hat`` built on the top-K Brier
    ``brier_top{topk}`` instead of the exact ``brier`` (which stays a column). ``table.info["compat"]``
    records the mode.
    """
    check_compat(compat, topk)
    index, count, group = _work_shard(shard)
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
    if (max_tokens_per_batch is not None and max_tokens_per_batch < 1) or (batch_size is not None and batch_size < 1):
        raise ValueError("max_tokens_per_batch and batch_size must be >= 1")
    if group.world > 1 and run_dir is None:
        raise ValueError("run_dir: required when scoring with several processes")
    standalone = shard is not None and not isinstance(shard, Shard)
    if standalone != (part is not None):
        raise ValueError("part: give shard=(i, n) and part=PATH together (the shard's part goes to part)")
    if standalone and sketch_dim is not None:
        raise ValueError("sketch_dim: shard parts do not carry gradient sketches; score with one process or "
                         "torchrun (one run directory) for the gradient columns")
    reader = records if isinstance(records, PoolReader) else PoolReader(records, on_error=on_error)
    if (count > 1 or standalone) and not reader.rereadable:
        raise ValueError("shard: a sharded run reads the pool twice (to plan the shards); pass a file or a list, "
                         "not a generator")
    if reader.on_error == "fail" and reader.rereadable:
        reader.check()  # a bad record fails now, not after scoring everything before it
    scorer = Scorer(model, tokenizer, max_length=max_length, topk=topk, chat_template=chat_template,
                    verify_head=verify_head, packing=packing, backend=backend, sketch_dim=sketch_dim,
                    sketch_layers=sketch_layers, sketch_seed=sketch_seed, exact_grad_norm=exact_grad_norm,
                    compat=compat)
    sketcher = scorer.sketcher
    plan = plan_shards(reader.source, count) if count > 1 or standalone else None
    options = {"topk": topk, "methods": list(wanted), "random_seed": random_seed, "exact_grad_norm": exact_grad_norm,
               "compat": compat}
    pool = _describe_source(reader) if run_dir is not None or standalone else {}
    fingerprint = {"pool": pool, "model": _describe_model(model), "topk": topk,
                   "max_length": scorer.chat.max_length, "chat_template": chat_template or "",
                   "extra_methods": list(extra), "lark_fast": __import__("lark_fast").__version__,
                   "sketch": sketcher.describe() if sketcher is not None else None, "compat": compat}
    settings = json.dumps(fingerprint, sort_keys=True)
    part_meta = {"shard": [index, count], "count": count, "table": options,
                 "pool_records": plan.n_records, "pool_digest": plan.pool_digest} if standalone else None
    if standalone and not overwrite:
        reused = reusable_part(part, settings, part_meta)
        if reused is not None:
            return build_table(reused.columns, topk, reused.issues(), {**reused.meta["info"], "part_reused": True},
                               wanted, random_seed, compat=compat)
    with RunLock(run_dir, group) if run_dir is not None else contextlib.nullcontext():
        store = _open_run_directory(run_dir, fingerprint, group, overwrite) if run_dir is not None else None
        done = set(store.load()["ordinal"].tolist()) if store is not None else set()
        rows = RecordRows(store, checkpoint_every, 120.0, sketcher.dim if sketcher is not None else None)
        default_tokens, default_size = default_batching(scorer)
        max_tokens_per_batch = max_tokens_per_batch or default_tokens
        batch_size = batch_size or default_size
        run = ScoringRun(scorer, reader, rows, index=index, plan=plan, done=done, extra=extra,
                         max_tokens_per_batch=max_tokens_per_batch, batch_size=batch_size, progress=progress)
        run.run()
        reader.require_records()

        dist_barrier(group)  # every rank's parts are written
        cols = store.load() if store is not None else concat(rows.chunks)
        dist_barrier(group)  # every rank has read them (rank 0 may delete them next)
        order = np.argsort(cols["ordinal"], kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
        sketches = None
        if sketcher is not None:
            blocks = store.sketch_blocks if store is not None else rows.blocks
            index_cols = [cols.get(k, np.zeros(0, np.int64)) for k in SKETCH_INDEX]
            sketches = SketchRows(blocks, *index_cols, cols["sketch_scale"])
        expected = plan.ordinals(index) if standalone else np.arange(reader.n_valid)
        missing = sorted(set(expected.tolist()) - set(cols["ordinal"].tolist()))
        if missing:
            raise RuntimeError(f"{len(missing)} records have no result (first ordinals {missing[:5]}); "
                               "a process probably died: run the same command again to finish")
        info = {"seconds": run.seconds, "scored_tokens_this_run": run.n_tokens, "forward_tokens": run.forward_tokens,
                "records_read": reader.n_valid, "complete": reader.complete, "pool_sha256": pool.get("sha256"),
                "records_resumed": len(done), "max_length": scorer.chat.max_length, "topk": topk,
                "max_tokens_per_batch": max_tokens_per_batch, "packed": scorer.packed, "world_size": group.world,
                "shard": [index, count], "methods": list(wanted), "random_seed": random_seed,
                "model": type(model).__name__, "corrupt_parts_redone": store.problems if store is not None else [],
                "sketch": sketcher.describe() if sketcher is not None else None, "compat": compat}
        if standalone:
            write_part(part, cols, settings, {**part_meta, "issues": [i.to_dict() for i in reader.issues],
                                              "complete": reader.complete, "info": info})
        table = build_table(cols, topk, reader.issues, info, wanted, random_seed, sketches, exact_grad_norm, compat)
        if save_sketches is not None and group.rank == 0:
            write_sketches(save_sketches, sketches, sketcher.dim, {**sketcher.describe(), "rows": len(table)})
    return table


def _work_shard(shard) -> tuple:
    """(index, count, process group) of ``score``'s ``shard``: None (the whole pool), (i, n) (one shard in
    this process alone) or a ``dist.Shard`` (a torchrun rank scores shard rank/world)."""
    if shard is None:
        return 0, 1, Shard()
    if isinstance(shard, Shard):
        return shard.rank, shard.world, shard
    return (*parse_shard(shard), Shard())


def _open_run_directory(run_dir, fingerprint: dict, group: Shard, overwrite: bool) -> RunDirectory:
    """Rank 0 creates (or checks) the run directory before the other ranks open it."""
    if group.rank == 0:
        store = RunDirectory(run_dir, fingerprint, 0, overwrite)
    dist_barrier(group)
    if group.rank != 0:
        store = RunDirectory(run_dir, fingerprint, group.rank, overwrite=False)
    return store


def build_table(cols: dict, topk: int, issues: list, info: dict, wanted: tuple = (), random_seed: int = 0,
                sketches: Optional[SketchRows] = None, exact_grad_norm: bool = False,
                compat: str = "exact") -> ScoreTable:
    """The score table from per-record sums (docs/method.md §3): per-trajectory means, then each method's
    column (``Method.compute``: every fused-pass method, and the requested others), then (with
    ``sketches``) the gradient columns of docs/method.md §4. ``compat="published"``: rho and g_hat from
    the top-K Brier (docs/method.md §3.7)."""
    means = trajectory_scores(cols["n_tokens"], cols["nll"], cols["brier"], cols["entropy"], cols["rank_clipped"],
                              cols["brier_topk"] if topk else None, compat)
    status = cols["status"].copy()
    reason = cols["reason"].copy()
    scored = status == chat.OK
    finite = np.isfinite(means["L"]) & np.isfinite(means["brier"]) & np.isfinite(means["entropy"])
    bad = scored & ~finite
    status[bad] = chat.NONFINITE
    reason[bad] = "the student produced non-finite statistics (NaN/inf hidden states or logits)"
    ok = status == chat.OK
    for k in means:
        means[k] = np.where(ok, means[k], np.nan)
    columns = {
        "problem_id": cols["problem_id"], "candidate_id": cols["candidate_id"], "teacher": cols["teacher"],
        "n_tokens": np.where(ok, cols["n_tokens"], 0), "truncated": cols["truncated"], "status": status,
        "L": means["L"], "brier": means["brier"],
    }
    run = RunSums(cols, means, ok, topk, random_seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        for m in METHODS.values():
            if m.compute is not None and (m.cost == FUSED or m.name in wanted):
                values = m.compute(run)
                if values is not None:
                    columns[m.column] = values
        if topk:
            columns[f"brier_top{topk}"] = means["brier_topk"]
        if sketches is not None:
            columns.update(gradient_columns(cols, means, ok, sketches, exact_grad_norm))
    columns["reason"] = reason
    columns["content_hash"] = cols["content_hash"]  # of each record's messages: select checks the pool against it
    info = {**info, "scored_tokens": int(columns["n_tokens"].sum())}
    return ScoreTable(columns, issues=issues, info=info)


def gradient_columns(cols: dict, means: dict, ok: np.ndarray, sketches: SketchRows, exact: bool) -> dict:
    """grad_norm_sq, rho_grad, kappa, g_hat_grad (+ grad_norm_sq_exact). The Gram matrix of a problem
    takes its off-diagonal entries from the stored float16 sketches and its diagonal from
    grad_norm_sq (summed in float64 before rounding)."""
    g = np.where(ok, cols["grad_norm_sq"], np.nan)
    L = means["L"]

    def gram_of(idx):
        s = sketches.get(idx)
        gram = s @ s.T
        np.fill_diagonal(gram, g[idx])
        return gram

    out = {"grad_norm_sq": g,
           "rho_grad": np.where(L > L_FLOOR, g / L, np.where(np.isnan(L), np.nan, 0.0)),
           "kappa": np.where(means["brier"] > 0, g / np.where(means["brier"] > 0, means["brier"], 1), np.nan),
           "g_hat_grad": lark_energy_grad(cols["problem_id"], L, ok & np.isfinite(g), gram_of)}
    if exact:
        out["grad_norm_sq_exact"] = np.where(ok, cols["grad_norm_sq_exact"], np.nan)
    return out


def _describe_source(reader) -> dict:
    if reader.format == "records":
        return {"name": reader.name}
    return {"sha256": file_sha256(reader.name)}


def _describe_model(model) -> dict:
    """The model's part of a run's fingerprint: the same for the same weights whatever the path they were
    loaded from, the device or the thread count (a float sum of the head was not: it depends on the
    reduction order), different for other weights: the sha256 of an evenly strided sample of about 2^20
    of the head's entries, exact in float32."""
    p = model.get_output_embeddings().weight.detach().reshape(-1)
    sample = p[:: max(1, p.numel() >> 20)].float().cpu().numpy()
    return {"class": type(model).__name__, "n_parameters": sum(x.numel() for x in model.parameters()),
            "dtype": str(p.dtype), "head_sha256": hashlib.sha256(sample.tobytes()).hexdigest()}
