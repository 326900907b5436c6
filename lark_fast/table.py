"""ScoreTable (one row per pool record) and atomic file output.

Formats by extension: ``.parquet`` (default) or ``.jsonl``. Non-finite floats are written as
null in JSON. Every write goes to a temporary file ``.<name>.<pid>.<random>.tmp`` in the target
directory (created with the mode the umask gives, as a plain ``open`` would), then ``os.replace``;
``remove_stale_temporaries`` deletes those a killed process left behind.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

STRING_COLUMNS = ("problem_id", "candidate_id", "teacher", "content_hash", "status", "reason")
INT_COLUMNS = ("n_tokens",)
BOOL_COLUMNS = ("truncated",)
SCORE_COLUMNS = ("problem_id", "candidate_id", "teacher", "n_tokens", "truncated", "status",
                 "L", "brier", "rho", "g_hat", "entropy", "rsr")


TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _create_temporary(path: Path) -> tuple:
    """(fd, name) of a new temporary file beside ``path``, mode 0666 less the umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = "w", **kw):
    """Yields a file object; on success the file replaces ``path`` in one rename, else it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder: Union[str, os.PathLike], name: Optional[str] = None) -> list:
    """Deletes the temporary files of ``atomic_write`` in ``folder`` (of the output ``name`` only, if
    given) whose writing process is no longer running on this machine; returns their paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".{name}.*.tmp" if name else ".*.tmp"):
        m = TEMPORARY.match(p.name)
        if m and (name is None or m["name"] == name) and not process_alive(int(m["pid"])):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            removed.append(p)
    return removed


def check_output(path: Union[str, os.PathLike]) -> Path:
    """Fails early, with a ValueError that says why, when ``path`` cannot be written: it is a directory, its
    folder cannot be created, or nothing can be created in it (read-only, full, no permission)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{path}: cannot create its folder {path.parent} ({e.strerror or e})") from None
    try:
        fd, tmp = _create_temporary(path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{path}: cannot write in {path.parent} ({e.strerror or e})") from None
    return path


def write_json(path, obj) -> None:
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_write(path, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_jsonable(row), ensure_ascii=False, allow_nan=False))
            f.write("\n")
            n += 1
    return n


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


class ScoreTable:
    """Columns of equal length as numpy arrays; ``table["g_hat"]`` gives one.

    ``issues`` holds the pool records that could not be read (each with file, line, field and
    reason); rows exist only for records that were read.
    """

    def __init__(self, columns: dict, issues: Optional[list] = None, info: Optional[dict] = None):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns have different lengths: { {k: len(v) for k, v in columns.items()} }")
        self.columns = {k: _as_column(k, v) for k, v in columns.items()}
        self.issues = list(issues or [])
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {', '.join(self.columns)}")
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def column_names(self) -> list:
        return list(self.columns)

    def __repr__(self) -> str:
        return f"ScoreTable({len(self)} rows; {', '.join(self.columns)})"

    def rows(self) -> Iterable[dict]:
        names = list(self.columns)
        for values in zip(*(self.columns[n].tolist() for n in names)):
            yield dict(zip(names, values))

    def to_pylist(self) -> list:
        return list(self.rows())

    def to_arrow(self):
        import pyarrow as pa
        return pa.table({k: pa.array(v.tolist() if v.dtype == object else v) for k, v in self.columns.items()})

    def to_pandas(self):
        """A pandas.DataFrame (pandas is optional: ``pip install pandas`` or ``lark_fast[pandas]``)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise ImportError("ScoreTable.to_pandas needs pandas, which lark_fast does not install: "
                              "pip install pandas (or pip install 'lark_fast[pandas]')") from None
        return self.to_arrow().to_pandas()

    def write(self, path: Union[str, os.PathLike]) -> None:
        fmt = table_format(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq
            with atomic_write(path, "wb") as f:
                pq.write_table(self.to_arrow(), f)
        else:
            write_jsonl(path, self.rows())

    @classmethod
    def read(cls, path: Union[str, os.PathLike]) -> "ScoreTable":
        fmt = table_format(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"score table not found: {path}")
        if fmt == "parquet":
            import pyarrow.parquet as pq
            t = pq.read_table(path)
            return cls({name: t.column(name).to_pylist() for name in t.column_names})
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{i}: invalid JSON: {e.msg}") from None
        names = list(dict.fromkeys(k for r in rows for k in r))
        return cls({n: [r.get(n) for r in rows] for n in names})


def _as_column(name: str, values) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype != object and name not in STRING_COLUMNS:
        return values
    values = list(values)
    if name in STRING_COLUMNS or any(isinstance(v, str) for v in values):
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    if name in INT_COLUMNS:
        return np.array([0 if v is None else v for v in values], dtype=np.int64)
    if name in BOOL_COLUMNS:
        return np.array([bool(v) for v in values], dtype=bool)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def table_format(path) -> str:
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    raise ValueError(f"{path}: unknown table format; expected .parquet or .jsonl")
