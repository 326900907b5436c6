"""Shared helpers of the benchmark scripts (the measuring tools live in lark_fast.bench)."""
from __future__ import annotations

from pathlib import Path

from lark_fast.bench import PeakMemory, machine, write_csv  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results"
