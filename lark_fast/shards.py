"""Shards, the unit of scale-out work (docs/method.md §11), and their self-describing parts.

A pool is cut into N shards by whole problems, balanced by length: the problems, largest first (total
characters of their valid records' messages; ties by first appearance), each go to the shard with the
least load so far (ties: the lowest index). The plan depends on the pool and N alone, so every process
that reads the same pool computes the same plan; whole problems keep a problem's candidates in one
forward of their shared prompt. ``lark-fast score --shard I/N`` (Slurm array tasks), torchrun ranks
(shard RANK/WORLD_SIZE) and, row for row, the Ray engine's per-record sums all end in the same merge:
``merge.merge_parts`` or ``scoring.build_table`` over the records' sums, which computes the per-problem
columns once every candidate of a problem is in.

A shard's part is one Parquet file: its records' sums (``columns.COLUMNS``, ordinal order), and in its
metadata the run's settings (``checkpoint.SETTINGS_KEY``: model, pool, options), the shard (I, N),
the pool's record count and digest, the table options, the pool's issues, and a checksum of all that.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .checkpoint import CHECKSUM_KEY, SETTINGS_KEY, checksum
from .columns import COLUMNS
from .pool import PoolIssue, PoolReader
from .table import atomic_write

PART_KEY = b"lark_fast.part"


class CorruptPart(ValueError):
    """A part that cannot be read to its end or whose content does not match its checksum."""


def parse_shard(value) -> tuple:
    """``"I/N"`` or ``(I, N)`` -> (I, N) with 0 <= I < N; ValueError otherwise."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not m:
            raise ValueError(f"--shard: expected I/N (e.g. 3/10, I counted from 0), got {value!r}")
        value = (int(m[1]), int(m[2]))
    try:
        index, count = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"shard: expected (index, count), got {value!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard: index {index} is outside 0..{count - 1} (count {count})")
    return index, count


@dataclass(frozen=True)
class ShardPlan:
    """Which shard owns each valid record (``owner[ordinal]``), for ``count`` shards of a pool of
    ``n_records`` valid records whose keys and contents hash to ``pool_digest``."""
    count: int
    owner: np.ndarray
    pool_digest: str

    @property
    def n_records(self) -> int:
        return len(self.owner)

    def owns(self, index: int, ordinal: int) -> bool:
        return self.owner[ordinal] == index

    def ordinals(self, index: int) -> np.ndarray:
        return np.flatnonzero(self.owner == index)


def record_length(messages: list) -> int:
    return sum(len(m["content"]) for m in messages)


def plan_shards(source, count: int) -> ShardPlan:
    """The shard plan of a pool (a path or a sequence of records; read once, bad records skipped as
    ``PoolReader`` skips them): whole problems, largest first, each to the least-loaded shard."""
    problem_of, sizes, first = [], {}, {}
    digest = hashlib.sha256()
    for ordinal, rec in enumerate(PoolReader(source, on_error="skip")):
        problem_of.append(rec.problem_id)
        sizes[rec.problem_id] = sizes.get(rec.problem_id, 0) + record_length(rec.messages)
        first.setdefault(rec.problem_id, ordinal)
        digest.update(json.dumps([rec.problem_id, rec.candidate_id, rec.content_hash]).encode())
    return ShardPlan(count, balance(problem_of, sizes, first, count), digest.hexdigest())


def balance(problem_of: list, sizes: dict, first: dict, count: int) -> np.ndarray:
    """Shard of every record: greedy longest-processing-time assignment of whole problems."""
    loads = [(0, i) for i in range(count)]
    shard_of = {}
    for problem in sorted(sizes, key=lambda p: (-sizes[p], first[p])):
        load, i = heapq.heappop(loads)
        shard_of[problem] = i
        heapq.heappush(loads, (load + sizes[problem], i))
    return np.array([shard_of[p] for p in problem_of], dtype=np.int32)


@dataclass
class Part:
    """A shard's part as read back: its columns, the run's settings (JSON text) and its description."""
    path: Path
    columns: dict
    settings: str
    meta: dict

    @property
    def shard(self) -> tuple:
        return tuple(self.meta["shard"])

    @property
    def run(self) -> dict:
        """What must agree between the parts of one run: the settings and everything but the shard."""
        return {**json.loads(self.settings), **{k: self.meta[k] for k in RUN_KEYS}}

    def issues(self) -> list:
        return [PoolIssue(i["source"], i.get("line", i.get("row")), i["field"], i["reason"],
                          "line" if "line" in i else "row") for i in self.meta["issues"]]


RUN_KEYS = ("pool_records", "pool_digest", "count", "table")  # a part's description besides settings and shard


def _part_checksum(cols: dict, settings: str, meta: str) -> str:
    return checksum(cols, settings + "\x1e" + meta)


def write_part(path, cols: dict, settings: str, meta: dict) -> Path:
    """Writes a shard's part atomically (``meta``: shard, pool_records, pool_digest, count, table,
    issues, complete, info)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    text = json.dumps(meta, sort_keys=True)
    table = pa.table({k: pa.array(np.asarray(cols[k]).tolist() if t is object else np.asarray(cols[k], dtype=t))
                      for k, t in COLUMNS.items()})
    table = table.replace_schema_metadata({SETTINGS_KEY: settings.encode(), PART_KEY: text.encode(),
                                           CHECKSUM_KEY: _part_checksum(cols, settings, text).encode()})
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f)
    return Path(path)


def read_part(path) -> Part:
    """A shard's part; ValueError naming the file when it is not one, is unreadable or was edited."""
    import pyarrow.parquet as pq
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such part")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise CorruptPart(f"{path}: corrupt part, not a readable Parquet file ({type(e).__name__}: {e})") from None
    meta = table.schema.metadata or {}
    if PART_KEY not in meta:
        raise ValueError(f"{path}: not a shard part (no {PART_KEY.decode()} metadata; is it a score table? "
                         "parts come from `lark-fast score --shard I/N`)")
    settings, text = meta.get(SETTINGS_KEY, b"").decode(), meta[PART_KEY].decode()
    missing = [k for k in COLUMNS if k not in table.column_names]
    if missing:
        raise CorruptPart(f"{path}: corrupt part (columns {', '.join(missing)} missing)")
    cols = {k: np.array(table.column(k).to_pylist(), dtype=t) for k, t in COLUMNS.items()}
    if meta.get(CHECKSUM_KEY, b"").decode() != _part_checksum(cols, settings, text):
        raise CorruptPart(f"{path}: corrupt part (its content does not match its checksum); score the shard again")
    return Part(path, cols, settings, json.loads(text))


def reusable_part(path, settings: str, meta: dict) -> Optional[Part]:
    """The part at ``path`` when it is this shard's of this run (a rerun is then a no-op); None when there
    is none or it is corrupt (reported: the shard is scored again); ValueError when it belongs to another run or
    shard, or is no part (``overwrite`` replaces it)."""
    if not Path(path).exists():
        return None
    try:
        part = read_part(path)
    except CorruptPart as e:
        warnings.warn(f"{e}: scoring the shard again", stacklevel=3)
        return None
    expected = {**json.loads(settings), **{k: meta[k] for k in RUN_KEYS}}
    differ = sorted(k for k in set(expected) | set(part.run) if expected.get(k) != part.run.get(k))
    if part.shard != tuple(meta["shard"]):
        differ.append(f"shard ({part.shard[0]}/{part.shard[1]} there)")
    if differ:
        raise ValueError(f"{path}: holds the part of another run ({', '.join(differ)} differ); pass --overwrite to "
                         "replace it, or another --output")
    return part
