"""The command line on a tiny local model directory: score -> select, formats, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_records

from lark_fast.cli import main
from lark_fast.table import ScoreTable


@pytest.fixture
def pool(tmp_path):
    recs = make_records(4, 4)
    lines = [json.dumps(r) for r in recs]
    lines.insert(5, '{"problem_id": "broken"')
    lines.insert(9, json.dumps({**recs[0]}))  # duplicate of line 1
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_then_select(model_dir, pool, tmp_path, capsys):
    scores = tmp_path / "out" / "scores.parquet"
    assert main(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(scores),
                 "--format", "lark-json", "--quiet", "--batch-size", "3"]) == 0
    out, err = capsys.readouterr()
    assert f"{pool}:6: invalid JSON" in err and f"{pool}:10: duplicate (problem_id, candidate_id)" in err
    assert "scored 16 of 16 records read" in out and not (tmp_path / "out" / "scores.parquet.parts").exists()
    table = ScoreTable.read(scores)
    assert len(table) == 16 and (table["status"] == "ok").all()
    manifest = json.loads((tmp_path / "out" / "scores.manifest.json").read_text())
    assert [i["line"] for i in manifest["issues"]] == [6, 10] and manifest["versions"]["lark_fast"]
    lark = json.loads((tmp_path / "out" / "scores.lark.json").read_text())
    assert sorted(lark) == [f"prob-{i}" for i in range(4)] and len(lark["prob-0"]) == 4
    assert lark["prob-0"][0]["energy"] == pytest.approx(table["g_hat"][0])

    train = tmp_path / "out" / "train.jsonl"
    assert main(["select", "--scores", str(scores), "--input", str(pool), "--B", "2", "--output", str(train)]) == 0
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    assert 4 <= len(rows) <= 8
    per_problem = {}
    for r in rows:
        per_problem[r["meta"]["problem_id"]] = per_problem.get(r["meta"]["problem_id"], 0) + r["meta"]["train_weight"]
    assert all(abs(v - 1) < 1e-9 for v in per_problem.values()) and len(per_problem) == 4
    man = json.loads((tmp_path / "out" / "train.manifest.json").read_text())
    assert man["B"] == 2 and man["counts"]["problems"] == 4 and man["counts"]["written"] == len(rows)

    # the same scores written as JSONL read back identically
    jl = tmp_path / "out" / "scores.jsonl"
    assert main(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(jl), "--quiet",
                 "--batch-size", "5"]) == 0
    back = ScoreTable.read(jl)
    for k in ("L", "brier", "g_hat", "rsr"):
        np.testing.assert_allclose(back[k], table[k], rtol=1e-5)
    assert list(back["candidate_id"]) == list(table["candidate_id"])


def test_fail_mode_and_errors(model_dir, pool, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    assert main(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(out),
                 "--on-error", "fail", "--quiet"]) == 2
    assert f"{pool}:6: invalid JSON" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
    assert main(["score", "--model", str(tmp_path / "nope"), "--input", str(pool), "--output", str(out)]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(tmp_path / "s.csv")]) == 2
    assert "unknown table format" in capsys.readouterr().err


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "lark_fast.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and all(c in r.stdout for c in ("score", "select", "demo"))
