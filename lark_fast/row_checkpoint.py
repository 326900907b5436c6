"""Finished units of a long run (generated samples, measured utilities, training curves) as rows of
JSON objects, flushed atomically in parts so that a killed run resumes where it stopped.

The protocol is the scoring run's (``checkpoint.RunDirectory``): ``run.json`` holds the settings the
parts were made with and must match to resume (``--overwrite`` starts over); each part
``part-r000-{seq}.parquet`` is written in one rename and carries a checksum of its rows; a part that
cannot be read or does not match its checksum is reported, deleted, and its units are done again.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional

from .checkpoint import CHECKSUM_KEY, RunDirectory
from .table import atomic_write


def content_digest(obj) -> str:
    """A short digest of a JSON-serialisable object (what a run was made from, for its fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _digest(lines: list) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


class RowCheckpoint(RunDirectory):
    """Rows (JSON-serialisable dicts) of one run in checksummed parts; ``fingerprint`` must match to resume."""

    def write_part(self, rows: list) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq
        lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]
        table = pa.table({"row": pa.array(lines, pa.string())})
        table = table.replace_schema_metadata({CHECKSUM_KEY: _digest(lines).encode()})
        path = self.path / f"part-r{self.rank:03d}-{self._seq:06d}.parquet"
        with atomic_write(path, "wb") as f:
            pq.write_table(table, f)
        self._seq += 1
        return path

    def read(self, path: Path) -> Optional[list]:
        """A part's rows, or None (after deleting it) when it is unreadable or corrupt."""
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
            lines = table.column("row").to_pylist()
            if (table.schema.metadata or {}).get(CHECKSUM_KEY, b"").decode() != _digest(lines):
                raise ValueError("checksum mismatch")
            rows = [json.loads(line) for line in lines]
        except Exception as e:  # truncated file, bad footer, missing column, edited content
            msg = f"{path.name}: corrupt part ({type(e).__name__}: {e}); its work is done again"
            self.problems.append(msg)
            warnings.warn(msg, stacklevel=2)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return None
        return rows

    def load(self) -> list:
        """The rows of every valid part, in the order the parts were written."""
        return [r for p in self.parts() for r in (self.read(p) or [])]
