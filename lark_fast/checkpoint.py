"""Scoring results in parts: flushed atomically while scoring, resumed after a crash, merged at the end.

A run directory holds ``run.json`` (the settings the parts were made with) and parts
``part-r{rank}-{seq}.parquet``. Each part stores per-record sums keyed by ``ordinal`` (the record's
position among the pool's valid records) and a checksum of its content in the Parquet metadata. A
part that cannot be read, or whose content does not match its checksum, is reported, deleted and
its records are scored again; a finished part is never trusted blindly.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .table import atomic_write, write_json

COLUMNS = {  # name -> numpy dtype (object = string)
    "ordinal": np.int64, "problem_id": object, "candidate_id": object, "teacher": object, "truncated": bool,
    "status": object, "reason": object, "n_tokens": np.int64, "nll": np.float64, "brier": np.float64,
    "entropy": np.float64, "rank_clipped": np.float64, "brier_topk": np.float64, "entropy_topk": np.float64,
    "ifd_nll": np.float64, "ifd_n": np.float64, "local_nll": np.float64, "local_n": np.float64,
}
CHECKSUM_KEY = b"lark_fast.checksum"


def empty_columns() -> dict:
    return {k: np.zeros(0, dtype=t) for k, t in COLUMNS.items()}


def concat(chunks: list) -> dict:
    if not chunks:
        return empty_columns()
    return {k: np.concatenate([c[k] for c in chunks]).astype(t) for k, t in COLUMNS.items()}


def checksum(cols: dict) -> str:
    h = hashlib.sha256()
    for k, t in COLUMNS.items():
        v = np.asarray(cols[k])
        h.update(k.encode())
        h.update("\x1f".join(map(str, v.tolist())).encode() if t is object else np.ascontiguousarray(v, dtype=t).tobytes())
    return h.hexdigest()


class RunDirectory:
    """Parts of one scoring run. ``fingerprint`` (a dict of settings) must match to resume."""

    def __init__(self, path, fingerprint: dict, rank: int = 0, overwrite: bool = False):
        self.path = Path(path)
        self.rank = rank
        self.fingerprint = fingerprint
        self.problems: list = []  # messages about parts that were redone
        run = self.path / "run.json"
        if overwrite and rank == 0 and self.path.exists():
            for p in self.path.glob("part-*.parquet"):
                p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        if run.exists() and not overwrite:
            before = json.loads(run.read_text())
            diff = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
            if diff:
                raise ValueError(f"{self.path} holds parts of a run with other settings ({', '.join(diff)} differ); "
                                 "pass --overwrite to start over, or another --output")
        elif rank == 0:
            write_json(run, fingerprint)
        self._seq = 1 + max((int(p.stem.split("-")[2]) for p in self.path.glob(f"part-r{rank:03d}-*.parquet")),
                            default=-1)

    def parts(self) -> list:
        return sorted(self.path.glob("part-r*-*.parquet"))

    def write_part(self, cols: dict) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.table({k: pa.array(np.asarray(cols[k]).tolist() if t is object else np.asarray(cols[k], dtype=t))
                          for k, t in COLUMNS.items()})
        table = table.replace_schema_metadata({CHECKSUM_KEY: checksum(cols).encode()})
        path = self.path / f"part-r{self.rank:03d}-{self._seq:06d}.parquet"
        with atomic_write(path, "wb") as f:
            pq.write_table(table, f)
        self._seq += 1
        return path

    def read(self, path: Path) -> Optional[dict]:
        """A part's columns, or None (after deleting it) when it is unreadable or corrupt."""
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
            cols = {k: np.array(table.column(k).to_pylist(), dtype=t) for k, t in COLUMNS.items()}
            want = (table.schema.metadata or {}).get(CHECKSUM_KEY, b"").decode()
            if want != checksum(cols):
                raise ValueError("checksum mismatch")
        except Exception as e:  # truncated file, bad footer, missing column, edited content
            msg = f"{path.name}: corrupt part ({type(e).__name__}: {e}); its records are scored again"
            self.problems.append(msg)
            warnings.warn(msg, stacklevel=2)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return None
        return cols

    def load(self) -> dict:
        """All valid parts' rows (every rank's), one row per ordinal."""
        cols = concat([c for c in (self.read(p) for p in self.parts()) if c is not None])
        _, first = np.unique(cols["ordinal"], return_index=True)
        return {k: v[np.sort(first)] for k, v in cols.items()}
