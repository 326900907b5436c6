"""Measuring tools shared by ``lark-fast bench`` and the scripts under ``benchmarks/``: the machine and
git sha a result was taken on, peak memory of a block, a device sync before reading a clock, CSV output."""
from __future__ import annotations

import csv
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import torch


def machine() -> dict:
    """CPU / GPU names, core and thread counts, git sha of the working tree."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        sha = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "", "git": sha}


class PeakMemory:
    """Peak extra memory (MB) of a block: the CUDA allocator's peak on GPU, sampled RSS on CPU."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(0.002)

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mb = (max(self._peak, self._rss()) - self._base) / 2**20
        return False


def sync(device) -> None:
    """Waits for the work queued on ``device`` (a no-op off CUDA): call before reading a clock."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def write_csv(path, rows: list, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = meta or {}
    keys = list(dict.fromkeys(k for r in rows for k in r)) + list(meta)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({**r, **meta})
    return path
