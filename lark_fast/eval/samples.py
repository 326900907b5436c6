"""Reading the JSONL files that ``eval generate`` and ``eval grade`` write, validated row by row
(errors name the file, line and field)."""
from __future__ import annotations

import json
from pathlib import Path

SAMPLE_FIELDS = {"benchmark": str, "problem_id": str, "sample": int, "label": str, "answers": list,
                 "completion": str}
GRADED_FIELDS = {**SAMPLE_FIELDS, "correct": bool}


def read_rows(path, fields: dict) -> list:
    """The rows of a JSONL file; each must have ``fields`` (name -> type). Raises ValueError naming the
    line and field of the first bad row, or a repeated (benchmark, label, problem_id, sample)."""
    path = Path(path)
    rows, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected an object, got {type(row).__name__}")
            for name, kind in fields.items():
                if name not in row:
                    raise ValueError(f"{path}:{i}: {name}: missing")
                value = row[name]
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    raise ValueError(f"{path}:{i}: {name}: expected {kind.__name__}, got {value!r:.60}")
            key = (row["benchmark"], row["label"], row["problem_id"], row["sample"])
            if key in seen:
                raise ValueError(f"{path}:{i}: sample {row['sample']} of {row['benchmark']} {row['problem_id']} "
                                 f"({row['label']}) repeats line {seen[key]}")
            seen[key] = i
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no samples")
    return rows
