"""Scoring with Ray Data (docs/method.md §11): ``score_dataset`` and ``lark-fast score --engine ray``.

Needs the optional extra: ``pip install 'lark_fast[ray]'``. The pool is read with Ray's readers
(``read_pool``: JSONL or Parquet, local paths or object-store URLs) and kept in order
(``preserve_order``). ``TrajectoryScorer``, a callable class for ``Dataset.map_batches``, loads the
student once per actor (one GPU each on a GPU cluster, one CPU here) and returns, for each batch of
records, every record's validation result and per-trajectory sums (``columns.COLUMNS``); inside the
actor a batch is packed into forwards of at most ``max_tokens_per_batch`` tokens (first-fit
decreasing, a problem's candidates sharing their prompt), so every forward holds a similar token
count whatever the records' lengths, and Ray hands the next batch to whichever actor is free. The
driver numbers the valid records in pool order (a repeated (problem_id, candidate_id) is a bad
record, the first kept, as ``PoolReader`` does) and builds the table with ``scoring.build_table``,
which computes the per-problem columns over each problem's candidates: the same table as a local run.

Failures: an actor that dies is restarted by Ray and its batch retried (Ray Data's actor pools restart
actors and retry their tasks). With ``checkpoint_dir`` (a directory every actor can reach), each
batch's result is stored under a digest of the run's settings and the batch's records, so a restarted
job skips the batches already done.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .checkpoint import CHECKSUM_KEY, checksum, concat
from .columns import COLUMNS
from .pool import PoolError, PoolIssue, RecordError, parse_record

ISSUE_FIELD, ISSUE_REASON = "issue_field", "issue_reason"  # per input row: why it is not a record ("" if it is)
DUPLICATE = "duplicate"  # the issue reason of a record whose key came earlier in the same batch


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("the Ray engine needs Ray Data: pip install 'lark_fast[ray]'") from None
    return ray


def read_pool(paths: Union[str, Sequence[str]]):
    """A Ray Dataset of the pool file(s) (``.jsonl``/``.jsonl.gz`` or ``.parquet``, local or object-store
    URLs, all of one format), in file order."""
    ray = _require_ray()
    paths = [paths] if isinstance(paths, str) else list(paths)
    formats = {"parquet" if p.lower().endswith((".parquet", ".pq")) else
               "jsonl" if p.lower().endswith((".jsonl", ".jsonl.gz", ".ndjson")) else p for p in paths}
    if len(formats) != 1 or not formats <= {"jsonl", "parquet"}:
        raise ValueError(f"--input: expected .jsonl, .jsonl.gz or .parquet files of one format, got {', '.join(paths)}")
    # reading costs little next to scoring: read tasks take no CPU slot, so that actors holding every CPU
    # (2 actors on a 2-CPU machine) cannot starve the reads that feed them
    if formats == {"parquet"}:
        return ray.data.read_parquet(paths, num_cpus=0)
    return ray.data.read_json(paths, lines=True, num_cpus=0)


class TrajectoryScorer:
    """``Dataset.map_batches`` callable: loads the student once (``model``: a local model path as
    ``lark-fast score --model`` takes it, or a zero-argument callable returning ``(model, tokenizer)``)
    and maps a batch of pool rows (pyarrow) to one output row per input row: ``issue_field`` and
    ``issue_reason`` (empty for a valid record) and the record's sums (``columns.COLUMNS``; ``ordinal``
    is the row's position in the batch)."""

    def __init__(self, model: Union[str, Callable], *, device: str = "auto", dtype: str = "auto",
                 max_length: Optional[int] = None, topk: int = 50, extra_methods: Sequence[str] = (),
                 chat_template: Optional[str] = None, max_tokens_per_batch: Optional[int] = None,
                 batch_size: Optional[int] = None, backend: Optional[str] = None,
                 checkpoint_dir: Optional[str] = None, compat: str = "exact"):
        from .models import load_student
        from .scorer import Scorer
        from .scoring import _describe_model, default_batching

        model, tokenizer = model() if callable(model) else load_student(model, device, dtype)
        self.scorer = Scorer(model, tokenizer, max_length=max_length, topk=topk, chat_template=chat_template,
                             backend=backend, compat=compat)
        self.extra = tuple(extra_methods)
        default_tokens, default_size = default_batching(self.scorer)
        self.max_tokens_per_batch = max_tokens_per_batch or default_tokens
        self.batch_size = batch_size or default_size
        self.settings = json.dumps({"model": _describe_model(model), "topk": topk,
                                    "max_length": self.scorer.chat.max_length, "chat_template": chat_template or "",
                                    "extra_methods": list(self.extra), "compat": compat,
                                    "lark_fast": __import__("lark_fast").__version__}, sort_keys=True)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None

    def __call__(self, batch):
        records, issues, keys = [], [], []
        for row in batch.to_pylist():
            try:
                rec = parse_record(row)
            except RecordError as bad:
                records.append(None)
                issues.append((bad.field or "", bad.reason))
                keys.append(("", ""))
                continue
            repeated = rec.key in keys
            records.append(None if repeated else rec)
            issues.append(("", DUPLICATE if repeated else ""))
            keys.append(rec.key)
        stored = self._stored(records)
        if stored is not None:
            return stored
        cols = self._score([r for r in records if r is not None])
        out = _rows_per_input(records, issues, keys, cols)
        if self.checkpoint_dir is not None:
            self._store(records, out)
        return out

    def _score(self, records: list) -> dict:
        from .pool import PoolReader
        from .scoring import RecordRows, ScoringRun

        rows = RecordRows(None, every_records=1 << 62, every_seconds=float("inf"))
        reader = PoolReader([{"problem_id": r.problem_id, "candidate_id": r.candidate_id, "teacher": r.teacher,
                              "messages": r.messages} for r in records])
        ScoringRun(self.scorer, reader, rows, index=0, plan=None, done=set(), extra=self.extra,
                   max_tokens_per_batch=self.max_tokens_per_batch, batch_size=self.batch_size,
                   progress=False).run()
        cols = concat(rows.chunks)
        order = np.argsort(cols["ordinal"], kind="stable")
        return {k: v[order] for k, v in cols.items()}

    def _digest(self, records: list) -> str:
        h = hashlib.sha256(self.settings.encode())
        for r in records:
            h.update(json.dumps(None if r is None else [r.problem_id, r.candidate_id, r.teacher, r.content_hash])
                     .encode())
        return h.hexdigest()

    def _stored(self, records: list):
        """The stored result of this batch, or None (none stored, or unreadable: then it is scored again)."""
        if self.checkpoint_dir is None:
            return None
        import pyarrow.parquet as pq
        path = self.checkpoint_dir / f"{self._digest(records)}.parquet"
        try:
            table = pq.read_table(path)
        except (OSError, ValueError):
            return None
        cols = {k: np.array(table.column(k).to_pylist(), dtype=t) for k, t in COLUMNS.items()}
        if (table.schema.metadata or {}).get(CHECKSUM_KEY, b"").decode() != checksum(cols, self.settings):
            return None
        return table.replace_schema_metadata(None)

    def _store(self, records: list, out) -> None:
        import pyarrow.parquet as pq

        from .table import atomic_write
        cols = {k: np.array(out.column(k).to_pylist(), dtype=t) for k, t in COLUMNS.items()}
        with atomic_write(self.checkpoint_dir / f"{self._digest(records)}.parquet", "wb") as f:
            pq.write_table(out.replace_schema_metadata({CHECKSUM_KEY: checksum(cols, self.settings).encode()}), f)


def _rows_per_input(records: list, issues: list, keys: list, cols: dict):
    """A pyarrow table with one row per input row: the issue columns and the sums (a bad row: empty; a
    repeated record: its key)."""
    import pyarrow as pa

    from .columns import missing
    valid = [i for i, r in enumerate(records) if r is not None]
    data = {ISSUE_FIELD: pa.array([f for f, _ in issues], pa.string()),
            ISSUE_REASON: pa.array([r for _, r in issues], pa.string())}
    for k, t in COLUMNS.items():
        full = np.full(len(records), "" if t is object else False if t is bool else missing(k), dtype=t)
        full[valid] = cols[k]
        if k in ("problem_id", "candidate_id"):
            full[:] = [key[k == "candidate_id"] for key in keys]
        data[k] = pa.array(full.tolist(), pa.string()) if t is object else pa.array(full)
    data["ordinal"] = pa.array(np.arange(len(records)))
    return pa.table(data)


def score_dataset(ds, model: Union[str, Callable], *, concurrency: Optional[int] = None, num_gpus: float = 0,
                  rows_per_batch: int = 64, checkpoint_dir=None, max_length: Optional[int] = None, topk: int = 50,
                  methods: Sequence[str] = (), random_seed: int = 0, chat_template: Optional[str] = None,
                  max_tokens_per_batch: Optional[int] = None, batch_size: Optional[int] = None,
                  backend: Optional[str] = None, device: str = "auto", dtype: str = "auto", on_error: str = "skip",
                  source: str = "<dataset>", compat: str = "exact"):
    """Scores the pool records of the Ray Dataset ``ds`` (docs/method.md §7 columns; ``read_pool`` reads
    files) with ``concurrency`` actors (default: one per GPU with ``num_gpus``, else 2), each holding the
    student ``model`` (see ``TrajectoryScorer``), ``rows_per_batch`` records per actor call. Returns the
    same ``ScoreTable`` as ``lark_fast.score`` on the same records, in pool order; bad rows are in
    ``table.issues`` (``source``: record N, counted from 1 in pool order), or raise ``PoolError`` with
    ``on_error="fail"``. Options as in ``lark_fast.score``; ``checkpoint_dir`` keeps each batch's result
    so that a rerun skips the batches already done."""
    ray = _require_ray()
    from .methods import EXTRA, METHODS, SKETCH
    from .scores import check_compat
    from .scoring import build_table

    check_compat(compat, topk)
    wanted = tuple(sorted(set(methods)))
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if any(METHODS[m].cost == SKETCH for m in wanted):
        raise ValueError("methods: the Ray engine does not compute gradient sketches; score them locally or with "
                         "torchrun")
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("GPU", 0))) if num_gpus else 2
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    ds.context.execution_options.preserve_order = True
    kwargs = dict(device=device, dtype=dtype, max_length=max_length, topk=topk, chat_template=chat_template,
                  extra_methods=[m for m in wanted if METHODS[m].cost == EXTRA], backend=backend,
                  max_tokens_per_batch=max_tokens_per_batch, batch_size=batch_size,
                  checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir), compat=compat)
    t0 = time.perf_counter()
    scored = ds.map_batches(TrajectoryScorer, fn_constructor_args=(model,), fn_constructor_kwargs=kwargs,
                            batch_size=rows_per_batch,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=concurrency),
                            num_gpus=num_gpus, num_cpus=0 if num_gpus else 1)
    import pyarrow as pa
    out = pa.concat_tables(list(scored.iter_batches(batch_format="pyarrow", batch_size=None)))
    cols, issues = _number_records(out, source, on_error)
    info = {"engine": "ray", "actors": concurrency, "seconds": time.perf_counter() - t0,
            "records_read": len(cols["ordinal"]),
            "complete": True, "scored_tokens_this_run": int(cols["n_tokens"].sum()), "records_resumed": 0,
            "topk": topk, "methods": list(wanted), "random_seed": random_seed, "corrupt_parts_redone": [], "compat": compat}
    return build_table(cols, topk, issues, info, wanted, random_seed, compat=compat)


def _number_records(out, source: str, on_error: str) -> tuple:
    """(columns of the valid records, numbered in pool order, issues) from the actors' output rows."""
    reasons, fields = out.column(ISSUE_REASON).to_pylist(), out.column(ISSUE_FIELD).to_pylist()
    keys = list(zip(out.column("problem_id").to_pylist(), out.column("candidate_id").to_pylist()))
    keep, issues, seen = [], [], {}
    for i, (reason, key) in enumerate(zip(reasons, keys)):
        if reason and reason != DUPLICATE:
            issue = PoolIssue(source, i + 1, fields[i] or None, reason, "record")
        elif key in seen:
            issue = PoolIssue(source, i + 1, None, f"duplicate (problem_id, candidate_id) = ({key[0]!r}, {key[1]!r}); "
                              f"first seen at record {seen[key]}", "record")
        else:
            seen[key] = i + 1
            keep.append(i)
            continue
        if on_error == "fail":
            raise PoolError(issue)
        issues.append(issue)
    if not keep:
        first = f": {len(issues)} bad, the first: {issues[0]}" if issues else ""
        raise ValueError(f"{source}: no valid records{first}")
    valid = out.take(keep)
    cols = {k: np.array(valid.column(k).to_pylist(), dtype=t) for k, t in COLUMNS.items()}
    cols["ordinal"] = np.arange(len(keep))
    return cols, issues


def cmd_score_ray(args, started: str) -> int:
    """``lark-fast score --engine ray``: the table and manifest of a local run, scored by Ray actors."""
    import shutil

    from .report import manifest_path, report_issues, scores_manifest, summarize_scores
    from .table import check_output, remove_stale_temporaries, table_format, write_json

    unsupported = [flag for flag, given in (("--shard", args.shard), ("--sketch-dim", args.sketch_dim is not None),
                                            ("--format lark-json", args.format != "table"),
                                            ("--no-packing", args.no_packing)) if given]
    if unsupported:
        raise ValueError(f"--engine ray: {', '.join(unsupported)} not supported (score locally, with --shard or "
                         "torchrun)")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency: must be >= 1")
    table_format(args.output)
    man = manifest_path(args.output)
    for path in (Path(args.output), man):
        check_output(path)
        remove_stale_temporaries(path.parent, path.name)
    checkpoint_dir = Path(str(args.output) + ".parts")
    if args.overwrite:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    template = Path(args.chat_template).read_text(encoding="utf-8") if args.chat_template else None
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(address=args.ray_address, log_to_driver=not args.quiet)
    if args.quiet:
        ray.data.DataContext.get_current().enable_progress_bars = False
    gpus = int(ray.cluster_resources().get("GPU", 0)) if args.device in ("auto", "cuda") else 0
    inputs = [p for p in str(args.input).split(",") if p]
    table = score_dataset(read_pool(inputs), args.model, concurrency=args.concurrency, num_gpus=1 if gpus else 0,
                          checkpoint_dir=checkpoint_dir, max_length=args.max_length, topk=args.topk,
                          methods=[m for m in args.methods.split(",") if m], chat_template=template,
                          max_tokens_per_batch=args.max_tokens_per_batch, batch_size=args.batch_size,
                          backend=args.backend, device="cuda" if gpus else "cpu", dtype=args.dtype,
                          on_error=args.on_error, source=str(args.input), compat=args.compat)
    report_issues(table.issues)
    table.write(args.output)
    write_json(man, scores_manifest("score", table, [args.output], started, engine="ray", input=str(args.input),
                                    model=str(args.model),
                                    options={k: v for k, v in vars(args).items() if k != "func"}))
    if not args.keep_parts:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    for line in summarize_scores(table):
        print(line)
    print(f"wrote {args.output}, {man} ({table.info['actors']} Ray actors)")
    return 0
