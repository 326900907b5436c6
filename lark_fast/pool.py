"""Reading and validating a candidate pool (docs/method.md §7).

One record per JSONL line (or Parquet row): ``{"problem_id", "candidate_id", "teacher",
"messages": [{"role", "content"}, ...]}`` with an optional system turn, at least one user turn and
the assistant turn to score last. Records stream: the pool is never held in memory.

Every problem with a record becomes a :class:`PoolIssue` naming the file, line (or row) and
field. With ``on_error="skip"`` bad records are reported and reading goes on; with
``on_error="fail"`` the first one raises :class:`PoolError`. A file that cannot be read to its end
(a truncated or corrupt ``.jsonl.gz``) is an issue at its last good line, and the reader is then
not ``complete``. A Parquet pool whose columns have the wrong types is one schema error.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

from .fingerprint import content_hash

ROLES = ("system", "user", "assistant")
ON_ERROR = ("skip", "fail")
# what reading a file can raise past a good line: truncated or corrupt gzip, Parquet or disk
READ_ERRORS = (EOFError, zlib.error, OSError, ValueError)


@dataclass(frozen=True)
class PoolIssue:
    source: str
    line: int  # 1-based line (JSONL), row (Parquet) or position (in-memory records)
    field: Optional[str]
    reason: str
    unit: str = "line"

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.unit == "line" else f"{self.source}: {self.unit} {self.line}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"source": self.source, self.unit: self.line, "field": self.field, "reason": self.reason}


class PoolError(ValueError):
    """A bad record under ``on_error="fail"``; ``.issue`` says where and why."""

    def __init__(self, issue: PoolIssue):
        super().__init__(str(issue))
        self.issue = issue


@dataclass
class Record:
    problem_id: str
    candidate_id: str
    teacher: str
    messages: list  # [{"role": str, "content": str}, ...]; the last one is the assistant turn
    line: int = 0
    extra: dict = field(default_factory=dict)  # other top-level fields, kept for the output
    json_ids: tuple = ()  # (problem_id, candidate_id) as the pool wrote them, str or int (the published layout)

    @property
    def key(self) -> tuple:
        return (self.problem_id, self.candidate_id)

    @property
    def content_hash(self) -> str:
        return content_hash(self.messages)


def _check_id(obj: dict, name: str) -> str:
    if name not in obj:
        raise RecordError(name, "missing")
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RecordError(name, f"expected a string or integer, got {_type(v)}")
    v = str(v)
    if not v.strip():
        raise RecordError(name, "empty")
    return v


class RecordError(Exception):
    """A record that fails validation: ``field`` (None for the record as a whole) and ``reason``."""

    def __init__(self, field_name: Optional[str], reason: str):
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def parse_record(obj: Any, line: int = 0) -> Record:
    """Validates one decoded record; raises ``RecordError(field, reason)``."""
    if not isinstance(obj, dict):
        raise RecordError(None, f"expected a JSON object, got {_type(obj)}")
    problem_id = _check_id(obj, "problem_id")
    candidate_id = _check_id(obj, "candidate_id")
    if "teacher" not in obj:
        raise RecordError("teacher", "missing")
    if not isinstance(obj["teacher"], str):
        raise RecordError("teacher", f"expected a string, got {_type(obj['teacher'])}")
    if "messages" not in obj:
        raise RecordError("messages", "missing")
    messages = obj["messages"]
    if not isinstance(messages, list):
        raise RecordError("messages", f"expected a list of {{role, content}} objects, got {_type(messages)}")
    if not messages:
        raise RecordError("messages", "empty list")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}]", f"expected an object with role and content, got {_type(m)}")
        for key in ("role", "content"):
            if key not in m:
                raise RecordError(f"messages[{i}].{key}", "missing")
            if not isinstance(m[key], str):
                raise RecordError(f"messages[{i}].{key}", f"expected a string, got {_type(m[key])}")
        if m["role"] not in ROLES:
            raise RecordError(f"messages[{i}].role", f"expected one of {', '.join(ROLES)}, got {m['role']!r}")
        clean.append({"role": m["role"], "content": m["content"]})
    roles = [m["role"] for m in clean]
    if "user" not in roles:
        raise RecordError("messages", "no user turn")
    if "assistant" not in roles:
        raise RecordError("messages", "no assistant turn")
    if roles[-1] != "assistant":
        raise RecordError(f"messages[{len(roles) - 1}].role",
                   f"the last turn must be the assistant turn to score, got {roles[-1]!r}")
    extra = {k: v for k, v in obj.items() if k not in ("problem_id", "candidate_id", "teacher", "messages")}
    return Record(problem_id, candidate_id, obj["teacher"], clean, line, extra,
                  (obj["problem_id"], obj["candidate_id"]))


class PoolReader:
    """Iterates the valid records of a pool, collecting an issue for every bad one.

    ``source`` is a ``.jsonl`` / ``.jsonl.gz`` / ``.parquet`` path, or an iterable of dicts (the
    Python API; positions are then reported as lines, counted from 1). Duplicate
    ``(problem_id, candidate_id)`` keys are bad records (the first occurrence is kept).
    """

    def __init__(self, source: Union[str, os.PathLike, Iterable[dict]], on_error: str = "skip"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
        if isinstance(source, Mapping):
            raise TypeError("records: got a single record (a dict); pass a list of records or a pool file")
        self.source = source
        self.on_error = on_error
        self.issues: list[PoolIssue] = []
        self.n_valid = 0
        self.complete = True  # False once a read error ended the file early
        self.checked = False
        self._count: Optional[int] = None
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            self.name = str(path)
            if not path.is_file():
                raise FileNotFoundError(f"pool file not found: {path}")
            self.format = pool_format(path)
            if self.format == "parquet":
                check_parquet_schema(path)
        else:
            self.name = "<records>"
            self.format = "records"
        self.unit = "row" if self.format == "parquet" else "line"

    @property
    def rereadable(self) -> bool:
        """Whether the pool can be read twice (a file or a sequence; not a generator)."""
        return self.format != "records" or isinstance(self.source, (list, tuple))

    def count(self) -> Optional[int]:
        """Number of records (non-blank lines / rows) without parsing them; None for iterables and for
        files that cannot be read to their end."""
        if self.format == "records":
            return len(self.source) if hasattr(self.source, "__len__") else None
        if self._count is None:
            try:
                if self.format == "parquet":
                    import pyarrow.parquet as pq
                    self._count = pq.ParquetFile(self.name).metadata.num_rows
                else:
                    with _open_text(self.name) as f:
                        self._count = sum(1 for line in f if line.strip())
            except READ_ERRORS:
                return None
        return self._count

    def check(self) -> None:
        """Reads and validates the whole pool once, keeping nothing, so that a bad pool fails before any
        scoring: under ``on_error="fail"`` the first bad record raises PoolError, and a pool without a valid
        record raises ValueError (``require_records``). The counts start again for the real pass. Only for a
        ``rereadable`` pool."""
        if self.checked:
            return
        for _ in self:
            pass
        self.require_records()
        self.issues, self.n_valid, self.complete, self.checked = [], 0, True, True

    def require_records(self) -> None:
        """Raises ValueError, saying why, when no valid record was read."""
        if self.n_valid:
            return
        if not self.issues:
            raise ValueError(f"{self.name}: no records (the pool is empty or has only blank lines)")
        raise ValueError(f"{self.name}: no valid records: {len(self.issues)} bad, the first: {self.issues[0]}")

    def __iter__(self) -> Iterator[Record]:
        seen: dict = {}
        for line, obj in self.rows():
            try:
                if isinstance(obj, RecordError):
                    raise obj
                rec = parse_record(obj, line)
                first = seen.get(rec.key)
                if first is not None:
                    raise RecordError(None, f"duplicate (problem_id, candidate_id) = ({rec.problem_id!r}, "
                                     f"{rec.candidate_id!r}); first seen at {self.unit} {first}")
                seen[rec.key] = line
            except RecordError as bad:
                issue = PoolIssue(self.name, line, bad.field, bad.reason, self.unit)
                if self.on_error == "fail":
                    raise PoolError(issue) from None
                self.issues.append(issue)
                continue
            self.n_valid += 1
            yield rec

    def rows(self) -> Iterator[tuple]:
        """(line or row, decoded object) of every non-blank line / row, unvalidated; a line that cannot be
        decoded comes as a ``RecordError`` in place of the object."""
        if self.format == "records":
            for i, obj in enumerate(self.source, start=1):
                yield i, obj
        else:
            last = 0
            try:
                for last, obj in (self._parquet_rows() if self.format == "parquet" else self._jsonl_rows()):
                    yield last, obj
            except READ_ERRORS as e:
                self.complete = False
                where = f"cannot read past {self.unit} {last}, the rest of the pool is missing" if last else \
                    "cannot read the pool"
                yield last, RecordError(None, f"{where}: truncated or corrupt ({type(e).__name__}: {e})")

    def _parquet_rows(self) -> Iterator[tuple]:
        import pyarrow.parquet as pq
        row = 0
        for batch in pq.ParquetFile(self.name).iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                row += 1
                yield row, obj

    def _jsonl_rows(self) -> Iterator[tuple]:
        with (gzip.open(self.name, "rb") if self.name.endswith(".gz") else open(self.name, "rb")) as f:
            for line, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    yield line, json.loads(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as e:
                    yield line, RecordError(None, f"not valid UTF-8 ({e.reason} at byte {e.start})")
                except json.JSONDecodeError as e:
                    yield line, RecordError(None, f"invalid JSON: {e.msg} (column {e.colno})")


def check_parquet_schema(path) -> None:
    """Raises one ValueError naming every required column that is missing or of the wrong type (a
    Parquet pool whose ``messages`` are JSON strings, say), instead of one bad record per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pa.types
    try:
        schema = pq.read_schema(path)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None

    def text(x):
        return t.is_string(x) or t.is_large_string(x)

    def turns(x):
        if not (t.is_list(x) or t.is_large_list(x)) or not t.is_struct(x.value_type):
            return False
        fields = {x.value_type.field(i).name: x.value_type.field(i).type for i in range(x.value_type.num_fields)}
        return all(k in fields and text(fields[k]) for k in ("role", "content"))

    wanted = {"problem_id": (lambda x: text(x) or t.is_integer(x), "string or integer"),
              "candidate_id": (lambda x: text(x) or t.is_integer(x), "string or integer"),
              "teacher": (text, "string"), "messages": (turns, "list<struct<role: string, content: string>>")}
    bad = [f"{name} missing" if name not in schema.names else f"{name} is {schema.field(name).type}, expected {want}"
           for name, (ok, want) in wanted.items() if name not in schema.names or not ok(schema.field(name).type)]
    if bad:
        raise ValueError(f"{path}: schema error, no row can be a record: {'; '.join(bad)} (docs/method.md §7)")


def pool_format(path: Union[str, os.PathLike]) -> str:
    name = str(path).lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{path}: unknown pool format; expected .jsonl, .jsonl.gz or .parquet")


def _open_text(name: str):
    return gzip.open(name, "rt", encoding="utf-8", errors="replace") if name.endswith(".gz") else \
        open(name, encoding="utf-8", errors="replace")
