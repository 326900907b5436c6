"""Output files: atomic writes with the umask's mode, stale temporaries, early path checks, reading back."""
import os
import subprocess
import sys

import pytest

from lark_fast.table import ScoreTable, atomic_write, check_output, remove_stale_temporaries, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "a.txt") as f:
            f.write("partial")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = tmp_path / f".scores.parquet.{dead.pid}.0123abcd.tmp"
    live = tmp_path / f".scores.parquet.{os.getpid()}.0123abcd.tmp"  # being written by a running process
    other = tmp_path / f".train.jsonl.{dead.pid}.0123abcd.tmp"  # another output's
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path, "scores.parquet") == [stale]
    assert sorted(tmp_path.iterdir()) == sorted([live, other])


def test_check_output(tmp_path):
    assert check_output(tmp_path / "new" / "s.parquet") == tmp_path / "new" / "s.parquet"
    assert list((tmp_path / "new").iterdir()) == []  # the probe is gone
    with pytest.raises(ValueError, match="is a directory"):
        check_output(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot create its folder"):
        check_output(tmp_path / "file" / "s.parquet")


def test_read_errors_say_what(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="score table not found: .*missing.parquet"):
        ScoreTable.read(tmp_path / "missing.parquet")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="to_pandas needs pandas.*pip install pandas"):
        ScoreTable({"x": [1.0]}).to_pandas()
