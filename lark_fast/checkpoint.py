"""Scoring results in parts: flushed atomically while scoring, resumed after a crash, merged at the end.

A run directory holds parts ``part-r{rank}-{seq}.parquet`` (and ``lock``, see ``runlock.RunLock``). Each
part stores per-record sums keyed by ``ordinal`` (the record's position among the pool's valid records)
and, in its Parquet metadata, the settings it was made with (model, pool, max length, top-K, methods,
sketch options: the run's fingerprint) and a checksum of its content and settings. A part that cannot
be read, or whose content does not match its checksum, is reported, deleted and its records are
scored again; a part made with other settings than the current run's is refused (an error, never
mixed in); a finished part is never trusted blindly.

With gradient sketches, each part has a sidecar ``part-r{rank}-{seq}.sketch.npy``: one float16 row
per record, the record's sketch divided by its ``sketch_scale`` (max |entry|, kept in float64 in
the part), written before the part, whose metadata holds the sidecar's checksum. Sketches are read
back memory-mapped (``SketchRows``), a problem at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .columns import COLUMNS
from .fingerprint import file_sha256
from .table import atomic_write, remove_stale_temporaries, write_json

CHECKSUM_KEY = b"lark_fast.checksum"
SETTINGS_KEY = b"lark_fast.settings"
SKETCH_KEY = b"lark_fast.sketch_checksum"
SKETCH_INDEX = ("sketch_part", "sketch_row")  # where load() found each row's sketch


class SketchRows:
    """Per-record sketches kept as float16 blocks (memory-mapped parts, or arrays in memory):
    record i is ``blocks[part[i]][row[i]] * scale[i]``."""

    def __init__(self, blocks: list, part, row, scale):
        self.blocks = blocks
        self.part, self.row = np.asarray(part, dtype=np.int64), np.asarray(row, dtype=np.int64)
        self.scale = np.asarray(scale, dtype=np.float64)

    def get(self, indices) -> np.ndarray:
        """float64 [len(indices), dim]."""
        return np.stack([self.blocks[self.part[i]][self.row[i]].astype(np.float64) * self.scale[i] for i in indices])


def quantize(sketch: np.ndarray) -> tuple:
    """(float16 rows of max |entry| 1, float64 scales) of a float32 [rows, dim] block."""
    scale = np.abs(sketch).max(axis=1).astype(np.float64) if sketch.shape[1] else np.zeros(len(sketch))
    unit = np.divide(sketch, scale[:, None], out=np.zeros_like(sketch), where=scale[:, None] > 0)
    return unit.astype(np.float16), scale


def empty_columns() -> dict:
    return {k: np.zeros(0, dtype=t) for k, t in COLUMNS.items()}


def concat(chunks: list) -> dict:
    """Columns of several parts; with ``SKETCH_INDEX`` (part i's rows numbered within it) when
    every part has them."""
    if not chunks:
        return empty_columns()
    out = {k: np.concatenate([c[k] for c in chunks]).astype(t) for k, t in COLUMNS.items()}
    if all(SKETCH_INDEX[0] in c for c in chunks):
        for k in SKETCH_INDEX:
            out[k] = np.concatenate([c[k] for c in chunks]).astype(np.int64)
    return out


def with_sketch_index(cols: dict, part: int) -> dict:
    n = len(cols["ordinal"])
    return {**cols, SKETCH_INDEX[0]: np.full(n, part), SKETCH_INDEX[1]: np.arange(n)}


def checksum(cols: dict, settings: str) -> str:
    h = hashlib.sha256(settings.encode())
    for k, t in COLUMNS.items():
        v = np.asarray(cols[k])
        h.update(k.encode())
        h.update("\x1f".join(map(str, v.tolist())).encode() if t is object else np.ascontiguousarray(v, dtype=t).tobytes())
    return h.hexdigest()


class RunDirectory:
    """Parts of one scoring run, made with the settings ``fingerprint`` (a dict): resuming takes the
    parts made with the same settings and refuses the directory when it holds parts made with others."""

    def __init__(self, path, fingerprint: dict, rank: int = 0, overwrite: bool = False):
        self.path = Path(path)
        self.rank = rank
        self.fingerprint = fingerprint
        self.settings = json.dumps(fingerprint, sort_keys=True)
        self.problems: list = []  # messages about parts that were redone
        if overwrite and rank == 0 and self.path.exists():
            for p in [*self.path.glob("part-*.parquet"), *self.path.glob("part-*.sketch.npy")]:
                p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            remove_stale_temporaries(self.path)  # of parts a killed process was writing
        self._seq = 1 + max((int(p.stem.split("-")[2]) for p in self.path.glob(f"part-r{rank:03d}-*.parquet")),
                            default=-1)

    def parts(self) -> list:
        return sorted(self.path.glob("part-r*-*.parquet"))

    @staticmethod
    def sketch_path(part: Path) -> Path:
        return part.with_name(part.name[: -len(".parquet")] + ".sketch.npy")

    def write_part(self, cols: dict, sketch: Optional[np.ndarray] = None) -> Path:
        """Writes one part; ``sketch`` (float16 [rows, dim], see ``quantize``) goes to its sidecar first."""
        import pyarrow as pa
        table = pa.table({k: pa.array(np.asarray(cols[k]).tolist() if t is object else np.asarray(cols[k], dtype=t))
                          for k, t in COLUMNS.items()})
        meta = {CHECKSUM_KEY: checksum(cols, self.settings).encode(), SETTINGS_KEY: self.settings.encode()}
        path = self.next_part()
        if sketch is not None:
            with atomic_write(self.sketch_path(path), "wb") as f:
                np.save(f, np.ascontiguousarray(sketch, dtype=np.float16))
            meta[SKETCH_KEY] = file_sha256(self.sketch_path(path)).encode()
        return self.commit_part(path, table, meta)

    def next_part(self) -> Path:
        """The path of this rank's next part."""
        return self.path / f"part-r{self.rank:03d}-{self._seq:06d}.parquet"

    def commit_part(self, path: Path, table, meta: dict) -> Path:
        """Writes the part ``path`` (``next_part()``) in one rename, ``meta`` as its schema metadata."""
        import pyarrow.parquet as pq
        with atomic_write(path, "wb") as f:
            pq.write_table(table.replace_schema_metadata(meta), f)
        self._seq += 1
        return path

    def read(self, path: Path) -> tuple:
        """(columns, settings) of a part, or (None, None) after deleting it when it is unreadable or corrupt."""
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
            cols = {k: np.array(table.column(k).to_pylist(), dtype=t) for k, t in COLUMNS.items()}
            meta = table.schema.metadata or {}
            settings = meta.get(SETTINGS_KEY, b"").decode()
            if meta.get(CHECKSUM_KEY, b"").decode() != checksum(cols, settings):
                raise ValueError("checksum mismatch")
            if self.fingerprint.get("sketch") and settings == self.settings:
                if SKETCH_KEY not in meta or not self.sketch_path(path).exists():
                    raise ValueError("its sketches are missing")
                if meta[SKETCH_KEY].decode() != file_sha256(self.sketch_path(path)):
                    raise ValueError("sketch checksum mismatch")
        except Exception as e:  # truncated file, bad footer, missing column, edited content
            self.discard(f"{path.name}: corrupt part ({type(e).__name__}: {e}); its records are scored again",
                         path, self.sketch_path(path))
            return None, None
        return cols, settings

    def discard(self, msg: str, *paths: Path) -> None:
        """Reports a corrupt part (``self.problems`` and a warning) and deletes its files."""
        self.problems.append(msg)
        warnings.warn(msg, stacklevel=3)
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def load(self) -> dict:
        """All valid parts' rows (every rank's), one row per ordinal; with sketches, also
        ``SKETCH_INDEX`` into ``self.sketch_blocks`` (the parts' sidecars, memory-mapped). Raises
        ValueError when a part was made with other settings."""
        read = [(p, *self.read(p)) for p in self.parts()]
        foreign = [(p, s) for p, c, s in read if c is not None and s != self.settings]
        if foreign:
            raise ValueError(self._refusal(foreign))
        parts = [(p, c) for p, c, _ in read if c is not None]
        if self.fingerprint.get("sketch"):
            self.sketch_blocks = [np.load(self.sketch_path(p), mmap_mode="r") for p, _ in parts]
            parts = [(p, with_sketch_index(c, i)) for i, (p, c) in enumerate(parts)]
        cols = concat([c for _, c in parts])
        _, first = np.unique(cols["ordinal"], return_index=True)
        return {k: v[np.sort(first)] for k, v in cols.items()}

    def _refusal(self, foreign: list) -> str:
        diff = set()
        for _, settings in foreign:
            before = json.loads(settings) if settings else {}
            diff |= {k for k in set(before) | set(self.fingerprint) if before.get(k) != self.fingerprint.get(k)}
        return (f"{self.path} holds parts of a run with other settings ({', '.join(sorted(diff))} differ) in "
                f"{len(foreign)} parts (e.g. {foreign[0][0].name}); pass --overwrite to start over, or another "
                "--output")


def write_sketches(path, rows: SketchRows, dim: int, meta: dict) -> Path:
    """``path/sketches.npy`` (float16 [rows, dim], memory-mappable: row i is sketch i / scales[i]),
    ``path/scales.npy`` (float64) and ``path/sketches.json`` (``meta``: layers, k, seed, layout)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path / "sketches.npy", mode="w+", dtype=np.float16, shape=(len(rows.part), dim))
    for i, (p, r) in enumerate(zip(rows.part, rows.row)):
        out[i] = rows.blocks[p][r]
    out.flush()
    del out
    np.save(path / "scales.npy", rows.scale)
    offsets = np.cumsum([0] + [meta["k"] ** 2] * len(meta["layers"])).tolist()
    layout = ("row i = scales[i] * sketches[i]; layer j's k x k block (P_out G P_in^T, row-major) is columns "
              "layer_offsets[j]:layer_offsets[j + 1]")
    write_json(path / "sketches.json", {**meta, "dim": dim, "layer_offsets": offsets, "layout": layout})
    return path
