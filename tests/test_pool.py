"""Pool reading: every bad record is named by file, line and field; good ones all come through."""
import gzip
import json

import pytest

from lark_fast.pool import PoolError, PoolReader


def good(pid="p", cid="c", **kw):
    r = {"problem_id": pid, "candidate_id": cid, "teacher": "GPT-4",
         "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]}
    r.update(kw)
    return r


BAD_LINES = [
    ('{"problem_id": "p", ', None, "invalid JSON"),
    (json.dumps([1, 2]), None, "expected a JSON object, got list"),
    (json.dumps({k: v for k, v in good("x1").items() if k != "problem_id"}), "problem_id", "missing"),
    (json.dumps(good("x2", cid=None)), "candidate_id", "expected a string or integer, got null"),
    (json.dumps(good("x3", teacher=3)), "teacher", "expected a string, got int"),
    (json.dumps(good("x4", messages="hi")), "messages", "expected a list"),
    (json.dumps(good("x5", messages=[])), "messages", "empty list"),
    (json.dumps(good("x6", messages=[{"role": "user", "content": "q"}])), "messages", "no assistant turn"),
    (json.dumps(good("x7", messages=[{"role": "assistant", "content": "a"}])), "messages", "no user turn"),
    (json.dumps(good("x8", messages=[{"role": "user", "content": "q"}, {"role": "assistant"}])),
     "messages[1].content", "missing"),
    (json.dumps(good("x9", messages=[{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}])),
     "messages[0].content", "expected a string, got int"),
    (json.dumps(good("x10", messages=[{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}])),
     "messages[0].role", "expected one of system, user, assistant"),
    (json.dumps(good("x11", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                      {"role": "user", "content": "more"}])),
     "messages[2].role", "the last turn must be the assistant turn"),
    (json.dumps(good("p", "c")), None, "duplicate (problem_id, candidate_id) = ('p', 'c'); first seen at line 1"),
    (json.dumps(good(True, "c")), "problem_id", "expected a string or integer, got bool"),
    (json.dumps(good("  ", "c")), "problem_id", "empty"),
]


def write_pool(path, bad_lines):
    lines = [json.dumps(good("p", "c"))]
    expected = {}
    for i, (text, field, reason) in enumerate(bad_lines):
        lines.append(text)
        expected[len(lines)] = (field, reason)
        lines.append(json.dumps(good("p", f"ok{i}")))
    lines.insert(3, "")  # blank lines are not records
    expected = {(k + 1 if k > 3 else k): v for k, v in expected.items()}
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected


def test_every_bad_line_is_named_and_good_records_survive(tmp_path):
    path = tmp_path / "pool.jsonl"
    expected = write_pool(path, BAD_LINES)
    reader = PoolReader(path)
    recs = list(reader)
    assert [r.candidate_id for r in recs] == ["c"] + [f"ok{i}" for i in range(len(BAD_LINES))]
    assert len(reader.issues) == len(BAD_LINES)
    for issue in reader.issues:
        field, reason = expected[issue.line]
        assert issue.field == field and reason in issue.reason, (issue, expected[issue.line])
        assert str(issue).startswith(f"{path}:{issue.line}: ")
    assert reader.count() == len(BAD_LINES) * 2 + 1


def test_fail_mode_stops_at_first_bad_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    write_pool(path, BAD_LINES[3:5])
    reader = PoolReader(path, on_error="fail")
    seen = []
    with pytest.raises(PoolError, match=r"pool.jsonl:2: candidate_id: expected a string or integer") as e:
        for r in reader:
            seen.append(r)
    assert e.value.issue.line == 2 and len(seen) == 1


def test_integer_ids_and_extra_fields_are_kept():
    recs = list(PoolReader([good(3, 7, source="x")]))
    assert recs[0].problem_id == "3" and recs[0].candidate_id == "7" and recs[0].extra == {"source": "x"}
    assert recs[0].messages[-1] == {"role": "assistant", "content": "a"}


def test_utf8_errors_and_gzip(tmp_path):
    path = tmp_path / "pool.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write((json.dumps(good("p", "é")) + "\n").encode())
        f.write(b'{"problem_id": "\xff"}\n')
    reader = PoolReader(path)
    assert [r.candidate_id for r in reader] == ["é"]
    assert "not valid UTF-8" in reader.issues[0].reason and reader.issues[0].line == 2


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [good("p", "a"), good("p", "b", messages=[{"role": "user", "content": "q"}]), good("q", "a")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    reader = PoolReader(tmp_path / "pool.parquet")
    assert [r.key for r in reader] == [("p", "a"), ("q", "a")]
    assert str(reader.issues[0]) == f"{tmp_path / 'pool.parquet'}: row 2: messages: no assistant turn"
    assert reader.count() == 3


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "pool.csv").write_text("x")
    with pytest.raises(ValueError, match="unknown pool format"):
        PoolReader(tmp_path / "pool.csv")
    with pytest.raises(FileNotFoundError, match="pool file not found"):
        PoolReader(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="on_error"):
        PoolReader([], on_error="ignore")


def _gzip_pool(path, n=40):
    path.write_bytes(gzip.compress("".join(json.dumps(good("p", f"c{i}", pad="x" * i)) + "\n"
                                           for i in range(n)).encode()))
    return path


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    path = _gzip_pool(tmp_path / "pool.jsonl.gz")
    path.write_bytes(path.read_bytes()[:-40])
    reader = PoolReader(path)
    recs = list(reader)
    n = len(recs)
    assert 0 < n < 40 and not reader.complete and reader.count() is None
    assert [r.candidate_id for r in recs] == [f"c{i}" for i in range(n)]
    assert str(reader.issues[-1]).startswith(f"{path}:{n}: cannot read past line {n}, the rest of the pool is "
                                             "missing: truncated or corrupt (EOFError")
    with pytest.raises(PoolError, match=f"cannot read past line {n}"):
        list(PoolReader(path, on_error="fail"))


def test_corrupt_gzip(tmp_path):
    path = _gzip_pool(tmp_path / "pool.jsonl.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    reader = PoolReader(path)
    list(reader)
    assert not reader.complete and "truncated or corrupt" in reader.issues[-1].reason


def test_parquet_with_wrong_column_types_is_one_schema_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{**good("p", "a"), "messages": "[]", "teacher": 3}]
    pq.write_table(pa.Table.from_pylist(rows).drop_columns(["candidate_id"]), tmp_path / "pool.parquet")
    with pytest.raises(ValueError, match=r"schema error, no row can be a record: candidate_id missing; teacher is "
                                         r"int64, expected string; messages is string, expected list<struct<role: "
                                         r"string, content: string>>"):
        PoolReader(tmp_path / "pool.parquet")


def test_check_validates_the_whole_pool_first(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps(good("p", "a")) + "\n" + json.dumps(good("p", "b")) + "\n{\n")
    with pytest.raises(PoolError, match="pool.jsonl:3: invalid JSON"):
        PoolReader(path, on_error="fail").check()
    path.write_text(json.dumps(good("p", "a")) + "\n")
    reader = PoolReader(path, on_error="fail")
    reader.check()
    assert [r.key for r in reader] == [("p", "a")] and reader.n_valid == 1  # counts start again


@pytest.mark.parametrize("text,why", [("", r"no records \(the pool is empty or has only blank lines\)"),
                                      ("\n \n", r"no records \(the pool is empty or has only blank lines\)"),
                                      ("[]\n{}\n", "no valid records: 2 bad, the first: .*pool.jsonl:1: expected")])
def test_a_pool_without_valid_records_says_why(tmp_path, text, why):
    path = tmp_path / "pool.jsonl"
    path.write_text(text)
    reader = PoolReader(path)
    list(reader)
    with pytest.raises(ValueError, match=why):
        reader.require_records()


def test_a_single_record_is_not_a_pool():
    with pytest.raises(TypeError, match="a single record"):
        PoolReader(good())
