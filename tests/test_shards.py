"""Shards as the unit of work: the plan, --shard parts, lark-fast merge (docs/method.md §11). The oracle is the
single-process table."""
import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import assert_same_table, make_records, tiny_llama, write_pool

import lark_fast
from lark_fast import scoring
from lark_fast.cli import main
from lark_fast.fingerprint import file_sha256
from lark_fast.merge import MergeError, merge_parts
from lark_fast.shards import parse_shard, plan_shards, record_length
from lark_fast.table import ScoreTable

ALL_COLUMNS = ("L", "brier", "rho", "g_hat", "entropy", "rsr", "brier_top50", "global_naturalness", "topk_entropy")


def pool_records(n_problems=9, seed=3):
    """Problems of very different total lengths, their candidates not contiguous in the pool."""
    recs = make_records(n_problems=n_problems, per_problem=3, seed=seed)
    for i, r in enumerate(recs):
        r["messages"][-1]["content"] = "step " * (1 + (i * 7) % 23)
    return recs[::2] + recs[1::2]


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5) and parse_shard((0, 1)) == (0, 1)
    for bad in ("5/5", "-1/3", "1of3", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_plan_whole_problems_balanced_and_deterministic():
    recs = pool_records(n_problems=30, seed=1)
    plan = plan_shards(recs, 4)
    again = plan_shards(list(recs), 4)
    assert np.array_equal(plan.owner, again.owner) and plan.pool_digest == again.pool_digest
    owner_of = collections.defaultdict(set)
    size = collections.Counter()
    for r, o in zip(recs, plan.owner):
        owner_of[r["problem_id"]].add(int(o))
        size[r["problem_id"]] += record_length(r["messages"])
    assert all(len(v) == 1 for v in owner_of.values()), "a problem split across shards"
    loads = [sum(size[p] for p, o in owner_of.items() if o == {i}) for i in range(4)]
    assert max(loads) - min(loads) <= max(size.values())  # the greedy bound: at most one problem apart
    assert sorted(np.concatenate([plan.ordinals(i) for i in range(4)]).tolist()) == list(range(len(recs)))
    other = plan_shards(recs[:-1], 4)
    assert other.pool_digest != plan.pool_digest


def test_shards_merged_equal_one_process(tokenizer, tmp_path):
    model = tiny_llama(seed=2)
    recs = pool_records()
    ref = lark_fast.score(model, tokenizer, recs, progress=False, methods=["random"])
    paths = [tmp_path / f"part-{i}.parquet" for i in range(3)]
    problems = []
    for i, p in enumerate(paths):
        t = lark_fast.score(model, tokenizer, recs, shard=(i, 3), part=p, progress=False, methods=["random"])
        problems.append(set(t["problem_id"]))
        assert t.info["shard"] == [i, 3] and len(t) > 0
    assert sum(map(len, problems)) == len(set.union(*problems)) == 9  # whole problems, each in one shard
    merged = merge_parts(paths[::-1])  # any order
    assert_same_table(merged, ref)
    # a shard's own g_hat is already exact: its problems are whole
    first = lark_fast.score(model, tokenizer, recs, shard=(0, 3), part=paths[0], progress=False, methods=["random"])
    assert first.info["part_reused"]
    pos = {k: i for i, k in enumerate(zip(ref["problem_id"], ref["candidate_id"]))}
    idx = [pos[k] for k in zip(first["problem_id"], first["candidate_id"])]
    np.testing.assert_allclose(first["g_hat"], ref["g_hat"][idx], atol=1e-6)


def test_killed_shard_resumes_from_its_checkpoints(tokenizer, tmp_path, monkeypatch):
    model = tiny_llama(seed=2)
    recs = pool_records()
    part, run_dir = tmp_path / "part-1.parquet", tmp_path / "part-1.parquet.parts"
    real = scoring.RecordRows.flush
    calls = []

    def dies_after_first_part(self):
        real(self)
        if self.run_dir is not None and list(run_dir.glob("part-*.parquet")):
            calls.append(1)
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(scoring.RecordRows, "flush", dies_after_first_part)
    with pytest.raises(KeyboardInterrupt):
        lark_fast.score(model, tokenizer, recs, shard=(1, 3), part=part, run_dir=run_dir, checkpoint_every=2,
                        progress=False)
    assert calls and not part.exists()
    monkeypatch.setattr(scoring.RecordRows, "flush", real)
    t = lark_fast.score(model, tokenizer, recs, shard=(1, 3), part=part, run_dir=run_dir, checkpoint_every=2,
                        progress=False)
    assert t.info["records_resumed"] >= 2 and part.exists()
    whole = lark_fast.score(model, tokenizer, recs, shard=(1, 3), part=tmp_path / "fresh.parquet", progress=False)
    assert_same_table(t, whole)


def test_cli_shards_merge_and_refusals(model_dir, tmp_path, capsys):
    pool = write_pool(tmp_path / "pool.jsonl", pool_records())
    base = ["score", "--model", str(model_dir), "--input", str(pool), "--quiet"]
    assert main(base + ["--output", str(tmp_path / "ref.parquet")]) == 0
    parts = [tmp_path / "parts" / f"shard-{i}.parquet" for i in range(3)]
    for i, p in enumerate(parts):
        assert main(base + ["--output", str(p), "--shard", f"{i}/3"]) == 0
    assert main(base + ["--output", str(parts[1]), "--shard", "1/3"]) == 0  # a rerun is a no-op
    assert "its part existed, nothing was scored" in capsys.readouterr().out
    out = tmp_path / "merged.parquet"
    assert main(["merge", *map(str, parts), "--output", str(out)]) == 0
    assert_same_table(ScoreTable.read(out), ScoreTable.read(tmp_path / "ref.parquet"))
    man = json.loads((tmp_path / "merged.manifest.json").read_text())
    assert man["command"] == "merge" and man["parts"] == list(map(str, parts)) and man["output"] == [str(out)]
    assert set(man["sha256"]["parts"]) == set(man["parts"]) and man["sha256"]["outputs"][str(out)] == file_sha256(out)
    assert man["complete"] and man["status_counts"] == {"ok": len(ScoreTable.read(out))}
    capsys.readouterr()

    def refused(*paths):
        target = tmp_path / "refused.parquet"
        assert main(["merge", *map(str, paths), "--output", str(target)]) == 2
        assert not target.exists()
        return capsys.readouterr().err

    assert "shard 2 of 3 missing" in refused(parts[0], parts[1])
    err = refused(parts[0], parts[1], parts[1], parts[2])
    assert f"shard 1/3 given 2 times ({parts[1]}, {parts[1]})" in err
    foreign = tmp_path / "other" / "shard-2.parquet"
    assert main(base + ["--output", str(foreign), "--shard", "2/3", "--max-length", "64"]) == 0
    err = refused(parts[0], parts[1], foreign)
    assert f"{foreign} comes from another run than {parts[0]} (max_length differ)" in err
    # the same shard with other settings is refused, not overwritten
    assert main(base + ["--output", str(parts[2]), "--shard", "2/3", "--max-length", "64"]) == 2
    assert "holds the part of another run (max_length differ)" in capsys.readouterr().err
    # an edited part is named
    t = pq.read_table(parts[0])
    nll = t.schema.get_field_index("nll")
    pq.write_table(t.set_column(nll, "nll", [[v + 1 for v in t.column("nll").to_pylist()]])
                   .replace_schema_metadata(t.schema.metadata), parts[0])
    assert f"{parts[0]}: corrupt part" in refused(*parts)
    with pytest.warns(UserWarning, match="corrupt part"):  # a rerun of its shard scores it again
        assert main(base + ["--output", str(parts[0]), "--shard", "0/3"]) == 0
    assert main(["merge", *map(str, parts), "--output", str(out)]) == 0
    assert_same_table(ScoreTable.read(out), ScoreTable.read(tmp_path / "ref.parquet"))
    with pytest.raises(MergeError, match="no parts"):
        merge_parts([])


def test_shards_in_compat_mode_merge_to_the_compat_table(tokenizer, tmp_path):
    """The mode travels with the parts: merged compat shards equal the one-process compat table (rho and
    g_hat on the top-50 Brier, not the exact one), and an exact part does not merge with them."""
    model = tiny_llama(seed=4)
    recs = pool_records(n_problems=5, seed=5)
    ref = lark_fast.score(model, tokenizer, recs, progress=False, compat="published")
    exact = lark_fast.score(model, tokenizer, recs, progress=False)
    assert np.abs(ref["g_hat"] - exact["g_hat"]).max() > 1e-6  # the two modes differ on this pool
    paths = [tmp_path / f"part-{i}.parquet" for i in range(2)]
    for i, p in enumerate(paths):
        lark_fast.score(model, tokenizer, recs, shard=(i, 2), part=p, progress=False, compat="published")
    assert_same_table(merge_parts(paths), ref)
    other = tmp_path / "exact-1.parquet"
    lark_fast.score(model, tokenizer, recs, shard=(1, 2), part=other, progress=False)
    with pytest.raises(MergeError, match="compat"):
        merge_parts([paths[0], other])
