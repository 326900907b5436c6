"""lark-fast bench proxies on a tiny student: every method costed, agreement computed correctly."""
import csv

import numpy as np
import pytest
from helpers import tiny_llama
from scipy.stats import spearmanr

from lark_fast.proxy_bench import run_proxies, spearman_within_problems, topb_overlap
from lark_fast.methods import METHODS, SKETCH


def pool(tmp_path):
    import json
    rng = np.random.default_rng(0)
    words = ["so", "we", "add", "x", "2", "=", "then", "check"]
    path = tmp_path / "pool.jsonl"
    with open(path, "w") as f:
        for p in range(3):
            for c in range(4):
                steps = ["\n\n".join(" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(rng.integers(1, 5)))]
                f.write(json.dumps({"problem_id": f"p{p}", "candidate_id": f"c{c}", "teacher": f"T{c % 2}",
                                    "messages": [{"role": "user", "content": f"q{p}"},
                                                 {"role": "assistant", "content": steps[0]}]}) + "\n")
    return path


def test_bench_proxies_outputs(tokenizer, tmp_path):
    out = run_proxies(tiny_llama(), tokenizer, pool(tmp_path), tmp_path / "bench", B=2, progress=False)
    with open(tmp_path / "bench" / "costs.csv") as f:
        costs = {r["method"]: r for r in csv.DictReader(f)}
    assert set(costs) == {n for n, m in METHODS.items() if m.cost != SKETCH} | {"reference"}  # sketches: bench_sketch.py
    for name, r in costs.items():
        assert float(r["seconds"]) > 0 and {"passes", "tokens_per_s", "peak_mem_mb"} <= set(r)
    assert costs["length"]["passes"] == "0" and costs["lark"]["passes"] == "1"
    assert float(costs["local_naturalness"]["passes"]) > 1.0 and float(costs["ifd"]["passes"]) > 1.0
    assert costs["rsr"]["direction"] == "lower" and costs["lark"]["direction"] == "higher"
    corr = np.array(out["correlations"], dtype=float)
    names = out["methods"]
    assert np.allclose(corr, corr.T, equal_nan=True)
    assert all(corr[i, i] == pytest.approx(1.0) for i, n in enumerate(names) if np.isfinite(corr[i, i]))
    overlap = np.array(out["overlap"], dtype=float)
    assert np.allclose(np.diag(overlap), 1.0)
    summary = (tmp_path / "bench" / "summary.md").read_text()
    assert "| reference |" in summary and "Spearman" in summary
    assert out["fused_vs_lark"] > 0


def test_spearman_and_overlap_against_scipy():
    rng = np.random.default_rng(1)
    pids = np.repeat(["a", "b", "c", "d"], [5, 6, 2, 4])
    x, y = rng.normal(size=17), rng.normal(size=17)
    y[:3] = x[:3]  # ties and agreement
    x[6] = x[7]
    want = np.mean([spearmanr(x[pids == p], y[pids == p]).statistic for p in ("a", "b", "d")])  # "c" has < 3
    assert spearman_within_problems(pids, x, y) == pytest.approx(want)
    wa = np.array([1, 1, 0, 0, 0] + [0] * 12, float)
    wb = np.array([1, 0, 1, 0, 0] + [0] * 12, float)
    assert topb_overlap(pids, wa, wb) == pytest.approx(0.5)
