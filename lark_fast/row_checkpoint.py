"""Finished units of a long run (generated samples, measured utilities, training curves) as rows of
JSON objects, flushed atomically in parts so that a killed run resumes where it stopped.

The protocol is the scoring run's (``checkpoint.RunDirectory``): each part ``part-r000-{seq}.parquet``
carries the settings it was made with, which must match to resume (``--overwrite`` starts over), is
written in one rename and carries a checksum of its settings and rows; a part that
cannot be read or does not match its checksum is reported, deleted, and its units are done again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .checkpoint import CHECKSUM_KEY, SETTINGS_KEY, RunDirectory


def content_digest(obj) -> str:
    """A short digest of a JSON-serialisable object (what a run was made from, for its fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _digest(lines: list, settings: str) -> str:
    h = hashlib.sha256(settings.encode())
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


class RowCheckpoint(RunDirectory):
    """Rows (JSON-serialisable dicts) of one run in checksummed parts; ``fingerprint`` must match to resume."""

    def write_part(self, rows: list) -> Path:
        import pyarrow as pa
        lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]
        return self.commit_part(self.next_part(), pa.table({"row": pa.array(lines, pa.string())}),
                                {CHECKSUM_KEY: _digest(lines, self.settings).encode(),
                                 SETTINGS_KEY: self.settings.encode()})

    def read(self, path: Path) -> tuple:
        """(rows, settings) of a part, or (None, None) after deleting it when it is unreadable or corrupt."""
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
            lines = table.column("row").to_pylist()
            meta = table.schema.metadata or {}
            settings = meta.get(SETTINGS_KEY, b"").decode()
            if meta.get(CHECKSUM_KEY, b"").decode() != _digest(lines, settings):
                raise ValueError("checksum mismatch")
            rows = [json.loads(line) for line in lines]
        except Exception as e:  # truncated file, bad footer, missing column, edited content
            self.discard(f"{path.name}: corrupt part ({type(e).__name__}: {e}); its work is done again", path)
            return None, None
        return rows, settings

    def load(self) -> list:
        """The rows of every valid part, in the order the parts were written; raises ValueError when a
        part was made with other settings."""
        parts = self.parts()
        read = [self.read(p) for p in parts]
        foreign = [(p, s) for p, (rows, s) in zip(parts, read) if rows is not None and s != self.settings]
        if foreign:
            raise ValueError(self._refusal(foreign))
        return [r for rows, _ in read for r in (rows or [])]
