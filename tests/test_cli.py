"""The command line on a tiny local model directory: score -> select, formats, manifests, errors (bad
input and output locations before the model loads, disk errors, a truncated pool, a swapped pool)."""
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_records, run_cli, write_pool

from lark_fast.cli import main
from lark_fast.fingerprint import content_hash, file_sha256
from lark_fast.models import model_sha256
from lark_fast.report import manifest_path
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
    assert list(lark["scores"]) == [f"prob-{i}" for i in range(4)] and len(lark["scores"]["prob-0"]) == 4
    assert lark["scores"]["prob-0"][0]["g_hat"] == table["g_hat"][0] and lark["n_scored"] == 16

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


@pytest.fixture(scope="module")
def scored(model_dir, tmp_path_factory):
    """A pool and its score table from `lark-fast score`."""
    d = tmp_path_factory.mktemp("scored")
    pool = write_pool(d / "pool.jsonl", make_records(4, 3))
    scores = d / "scores.parquet"
    assert main(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(scores), "--quiet"]) == 0
    return pool, scores


def test_manifests_have_times_and_fingerprints(scored, tmp_path, model_dir):
    pool, scores = scored
    man = json.loads(manifest_path(scores).read_text())
    assert man["complete"] is True and man["started_at"] <= man["finished_at"]
    assert man["sha256"] == {"pool": file_sha256(pool), "model": model_sha256(model_dir),
                             "outputs": {str(scores): file_sha256(scores)}}
    table = ScoreTable.read(scores)
    assert list(table["content_hash"]) == [content_hash(r["messages"]) for r in make_records(4, 3)]
    train = tmp_path / "train.jsonl"
    assert main(["select", "--scores", str(scores), "--input", str(pool), "--output", str(train)]) == 0
    man = json.loads(manifest_path(train).read_text())
    assert man["sha256"] == {"pool": file_sha256(pool), "scores": file_sha256(scores),
                             "outputs": {str(train): file_sha256(train)}} and man["started_at"]


def test_chi2_summary_does_not_mention_B(scored, tmp_path, capsys):
    pool, scores = scored
    train = tmp_path / "train.jsonl"
    assert main(["select", "--scores", str(scores), "--input", str(pool), "--output", str(train),
                 "--rule", "chi2", "--tau", "1"]) == 0
    out = capsys.readouterr().out
    assert "rule chi2" in out and "B=" not in out and "fewer than B" not in out
    man = json.loads(manifest_path(train).read_text())
    assert man["B"] is None and "problems_with_fewer_than_B_valid" not in man["counts"]


def test_select_refuses_a_swapped_pool(scored, tmp_path):
    """Same ids, other content: refused by name, nothing written."""
    pool, scores = scored
    recs = make_records(4, 3)
    recs[5]["messages"][-1]["content"] = ""
    swapped = write_pool(tmp_path / "swapped.jsonl", recs)
    train = tmp_path / "train.jsonl"
    r = run_cli(["select", "--scores", scores, "--input", swapped, "--output", train])
    assert r.returncode == 2 and "differ from the ones that were scored" in r.stderr, r.stderr
    assert f"{recs[5]['problem_id']}/{recs[5]['candidate_id']} (line 6)" in r.stderr
    assert not train.exists() and not list(tmp_path.glob(".*tmp"))


def _parquet_pool(path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    recs = make_records(2, 2)
    pq.write_table(pa.Table.from_pylist([{**r, "messages": json.dumps(r["messages"])} for r in recs]), path)
    return path


BEFORE_THE_MODEL = {  # what is wrong -> the error
    "missing pool": "pool file not found",
    "empty pool": "no records (the pool is empty or has only blank lines)",
    "blank lines": "no records (the pool is empty or has only blank lines)",
    "Parquet column types": "schema error, no row can be a record: messages is string, expected list<struct",
    "output is a folder": "is a directory; give a file name",
    "output folder cannot be made": "cannot create its folder",
}


def _bad_input(case: str, d):
    """(pool, output) for a case of BEFORE_THE_MODEL."""
    good = write_pool(d / "good.jsonl", make_records(1, 1))
    if case == "missing pool":
        return d / "missing.jsonl", d / "s.parquet"
    if case in ("empty pool", "blank lines"):
        (d / "p.jsonl").write_text("" if case == "empty pool" else "\n  \n")
        return d / "p.jsonl", d / "s.parquet"
    if case == "Parquet column types":
        return _parquet_pool(d / "p.parquet"), d / "s.parquet"
    if case == "output is a folder":
        (d / "s.parquet").mkdir()
        return good, d / "s.parquet"
    return good, good / "s.parquet"


@pytest.mark.parametrize("case", BEFORE_THE_MODEL)
def test_errors_before_the_model_loads(case, tmp_path, capsys):
    """Bad input and output paths are named before the model loads (the model here does not exist)."""
    message = BEFORE_THE_MODEL[case]
    pool, out = _bad_input(case, tmp_path)
    assert main(["score", "--model", str(tmp_path / "no-model"), "--input", str(pool), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "not a model directory" not in err, err
    assert not list(tmp_path.glob("*.parts"))


def test_fail_mode_reads_the_whole_pool_first(tmp_path, capsys):
    """--on-error fail: a bad line at the end fails before the model loads, and leaves no parts."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in make_records(4, 4)) + '{"problem_id": \n')
    out = tmp_path / "s.parquet"
    assert main(["score", "--model", str(tmp_path / "no-model"), "--input", str(pool), "--output", str(out),
                 "--on-error", "fail"]) == 2
    assert f"{pool}:17: invalid JSON" in capsys.readouterr().err
    assert not list(tmp_path.glob("s.parquet*"))


def test_truncated_gzip_pool(model_dir, tmp_path, capsys):
    """A truncated .jsonl.gz: a pool error at its last good line; with skip, what was read is scored and
    the run is marked incomplete (exit 3); with fail, nothing is scored (exit 2)."""
    pool = tmp_path / "pool.jsonl.gz"
    pool.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in make_records(4, 4, seed=2)).encode()))
    pool.write_bytes(pool.read_bytes()[: len(pool.read_bytes()) // 2])
    out = tmp_path / "s.parquet"
    r = run_cli(["score", "--model", model_dir, "--input", pool, "--output", out, "--quiet"])
    assert r.returncode == 3, r.stderr
    man = json.loads(manifest_path(out).read_text())
    n = len(ScoreTable.read(out))
    assert man["complete"] is False and 0 < n < 16
    assert f"{pool}:{n}: cannot read past line {n}, the rest of the pool is missing" in r.stderr
    assert "INCOMPLETE" in r.stdout and "Traceback" not in r.stderr
    assert main(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(tmp_path / "f.parquet"),
                 "--on-error", "fail"]) == 2
    assert f"cannot read past line {n}" in capsys.readouterr().err and not (tmp_path / "f.parquet").exists()


READ_ONLY = """
import errno, os
real_open = os.open
def read_only(path, *args, **kw):
    if str(path).startswith({folder!r}):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, *args, **kw)
os.open = read_only
"""

FULL_DISK = """
import errno, os
from lark_fast import table
def write(self, path):
    with table.atomic_write(path, "wb") as f:
        f.write(b"PAR1")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
table.ScoreTable.write = write
"""


def test_output_location_errors(model_dir, tmp_path):
    """A read-only output folder is refused before the model loads; a full disk at the final write is a
    clean error that keeps the scored parts, and the rerun writes the table without scoring again."""
    pool = write_pool(tmp_path / "pool.jsonl", make_records(4, 3))
    folder = tmp_path / "ro"
    folder.mkdir()
    r = run_cli(["score", "--model", tmp_path / "no-model", "--input", pool, "--output", folder / "s.parquet"],
                prelude=READ_ONLY.format(folder=str(folder)))
    assert r.returncode == 2 and f"cannot write in {folder} (Read-only file system)" in r.stderr, r.stderr

    out = tmp_path / "s.parquet"
    args = ["score", "--model", model_dir, "--input", pool, "--output", out, "--quiet"]
    r = run_cli(args, prelude=FULL_DISK)
    assert r.returncode == 2 and "No space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "the scores are kept in" in r.stderr and list((tmp_path / "s.parquet.parts").glob("part-*.parquet"))
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    r = run_cli(args)
    assert r.returncode == 0 and "resumed: 12 records" in r.stdout, r.stderr
