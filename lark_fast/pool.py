"""Reading and validating a candidate pool (docs/method.md §7).

One record per JSONL line (or Parquet row): ``{"problem_id", "candidate_id", "teacher",
"messages": [{"role", "content"}, ...]}`` with an optional system turn, at least one user turn and
the assistant turn to score last. Records stream: the pool is never held in memory.

Every problem with a record becomes a :class:`PoolIssue` naming the file, line (or row) and
field. With ``on_error="skip"`` bad records are reported and reading goes on; with
``on_error="fail"`` the first one raises :class:`PoolError`.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

ROLES = ("system", "user", "assistant")
ON_ERROR = ("skip", "fail")


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

    @property
    def key(self) -> tuple:
        return (self.problem_id, self.candidate_id)


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
    return Record(problem_id, candidate_id, obj["teacher"], clean, line, extra)


class PoolReader:
    """Iterates the valid records of a pool, collecting an issue for every bad one.

    ``source`` is a ``.jsonl`` / ``.jsonl.gz`` / ``.parquet`` path, or an iterable of dicts (the
    Python API; positions are then reported as lines, counted from 1). Duplicate
    ``(problem_id, candidate_id)`` keys are bad records (the first occurrence is kept).
    """

    def __init__(self, source: Union[str, os.PathLike, Iterable[dict]], on_error: str = "skip"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
        self.source = source
        self.on_error = on_error
        self.issues: list[PoolIssue] = []
        self.n_valid = 0
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            self.name = str(path)
            if not path.is_file():
                raise FileNotFoundError(f"pool file not found: {path}")
            self.format = pool_format(path)
        else:
            self.name = "<records>"
            self.format = "records"
        self.unit = "row" if self.format == "parquet" else "line"

    def count(self) -> Optional[int]:
        """Number of records (non-blank lines / rows) without parsing them; None for iterables."""
        if self.format == "parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(self.name).metadata.num_rows
        if self.format == "records":
            return len(self.source) if hasattr(self.source, "__len__") else None
        with _open_text(self.name) as f:
            return sum(1 for line in f if line.strip())

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
        elif self.format == "parquet":
            import pyarrow.parquet as pq
            row = 0
            for batch in pq.ParquetFile(self.name).iter_batches(batch_size=1024):
                for obj in batch.to_pylist():
                    row += 1
                    yield row, obj
        else:
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
