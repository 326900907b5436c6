"""Scoring at scale: packing, streaming, several processes, checkpoints and resume, crashes, the run lock,
out-of-memory."""
import errno
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import make_records, run_cli, tiny_llama, write_pool

import lark_fast
from lark_fast import scorer as scorer_mod
from lark_fast.cli import main
from lark_fast.packing import pack_ffd, pack_shared, shared_prefix_row
from lark_fast.runlock import RunLock, RunLocked
from lark_fast.table import ScoreTable

SCORE_COLUMNS = ("L", "brier", "rho", "g_hat", "entropy", "rsr", "brier_top50")


def assert_same(a, b, rtol=1e-5):
    for k in ("problem_id", "candidate_id", "teacher", "status", "n_tokens", "truncated"):
        assert list(a[k]) == list(b[k]), k
    for k in SCORE_COLUMNS:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-7, err_msg=k)


def mixed_records(n=24, seed=0):
    """Very short and very long trajectories in one pool."""
    recs = make_records(n_problems=n // 3, per_problem=3, seed=seed)
    for i, r in enumerate(recs):
        r["messages"][-1]["content"] = ("x" if i % 4 == 0 else "long step " * (1 + 37 * (i % 5)))
    return recs


def shared_prompt_records(n_problems=4, per_problem=4, seed=0):
    """Every problem's candidates share its prompt (system + user turns), as a candidate pool does."""
    recs = mixed_records(n_problems * per_problem, seed=seed)
    for i, r in enumerate(recs):
        p = i // per_problem
        r["problem_id"] = f"prob-{p}"
        r["messages"] = [{"role": "system", "content": "Think step by step. " * (1 + p)},
                         {"role": "user", "content": f"Problem {p}: what is {p} + 1?"}, r["messages"][-1]]
    return recs


def test_pack_shared_counts_a_shared_prompt_once():
    seqs = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [7, 7, 7], [1, 2, 3, 8, 8, 8]]
    prefix = [3, 3, 1, 3]  # 0, 1, 3 share [1, 2, 3]; 2 is alone
    rows = pack_shared(seqs, prefix, capacity=9)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3]
    assert [0, 1, 3] in rows  # 3 + 2 + 1 + 3 = 9 tokens with the prompt once (15 without)
    assert all(len(r) <= 2 for r in pack_shared(seqs, prefix, capacity=100, max_per_row=2))
    ids, pos, spans, where = shared_prefix_row(seqs, prefix)
    assert ids.shape[1] == 3 + 2 + 1 + 3 + 3
    for seq, w in zip(seqs, where):
        assert ids[0, w].tolist() == seq and pos[0, w].tolist() == list(range(len(seq)))
    assert spans[0] == ((0, 3), ((0, 3),)) and spans[1] == ((3, 5), ((0, 3), (3, 5)))


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_shared_prompts_equal_one_at_a_time(tokenizer, arch):
    import transformers as tf
    torch.manual_seed(0)
    model = tiny_llama(seed=4) if arch == "llama" else tf.Gemma2ForCausalLM(tf.Gemma2Config(
        vocab_size=517, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, max_position_embeddings=1024, sliding_window=16,
        attn_logit_softcapping=5.0, initializer_range=0.3)).eval()
    recs = shared_prompt_records(seed=5)
    scorer = scorer_mod.Scorer(model, tokenizer)
    assert scorer.packed and scorer.shares_prefixes
    items = [scorer.chat(r["messages"]) for r in recs[:4]]
    assert scorer.layout(items, share_prefixes=True).ids.shape[1] < sum(len(t.input_ids) for t in items)
    alone = lark_fast.score(model, tokenizer, recs, batch_size=1, progress=False)
    for capacity in (64, 8192):
        assert_same(lark_fast.score(model, tokenizer, recs, max_tokens_per_batch=capacity, progress=False), alone)


def test_pack_ffd():
    rows = pack_ffd([5, 3, 8, 2, 2, 9], capacity=10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert rows == [[5], [2, 3], [0, 1, 4]]  # 9 | 8+2 | 5+3+2 (first fit, longest first)
    assert pack_ffd([12, 1], capacity=10) == [[0], [1]]  # too long: a row of its own
    assert pack_ffd([1, 1, 1], capacity=10, max_per_row=2) == [[0, 1], [2]]


@pytest.mark.parametrize("capacity", [64, 700, 100000])
def test_packed_equals_one_at_a_time(tokenizer, capacity):
    model = tiny_llama(seed=2)
    recs = mixed_records()
    alone = lark_fast.score(model, tokenizer, recs, batch_size=1, progress=False)
    packed = lark_fast.score(model, tokenizer, recs, max_tokens_per_batch=capacity, progress=False)
    padded = lark_fast.score(model, tokenizer, recs, packing="off", batch_size=5, progress=False)
    assert packed.info["packed"] and not padded.info["packed"]
    assert_same(packed, alone)
    assert_same(padded, alone)


def test_sliding_window_and_softcap_attention_in_packed_rows(tokenizer):
    import transformers as tf
    torch.manual_seed(0)
    cfg = tf.Gemma2Config(vocab_size=517, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=1024,
                          sliding_window=16, attn_logit_softcapping=5.0, initializer_range=0.3)
    model = tf.Gemma2ForCausalLM(cfg).eval()
    recs = mixed_records(12, seed=3)
    alone = lark_fast.score(model, tokenizer, recs, batch_size=1, progress=False)
    packed = lark_fast.score(model, tokenizer, recs, progress=False)
    assert packed.info["packed"]
    assert_same(packed, alone)


def test_reading_streams(tokenizer, monkeypatch):
    produced = {"n": 0}

    def pool():
        for i in range(200000):
            produced["n"] += 1
            yield {"problem_id": str(i // 4), "candidate_id": str(i % 4), "teacher": "T",
                   "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c"}]}

    class Stop(Exception):
        pass

    def first_batch(self, items, **kw):
        raise Stop(produced["n"])

    monkeypatch.setattr(scorer_mod.Scorer, "score_batch", first_batch)
    with pytest.raises(Stop) as e:
        lark_fast.score(tiny_llama(), tokenizer, pool(), max_tokens_per_batch=512, progress=False)
    assert e.value.args[0] < 10000  # the reader ran at most a bounded queue ahead, not through the pool


def test_out_of_memory_splits_the_batch(tokenizer, monkeypatch):
    real = scorer_mod.Scorer.score_batch
    calls = []

    def limited(self, items, **kw):
        calls.append(len(items))
        if sum(len(t.input_ids) for t in items) > 300:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, items, **kw)

    recs = mixed_records()
    model = tiny_llama()
    want = lark_fast.score(model, tokenizer, recs, batch_size=1, progress=False)
    monkeypatch.setattr(scorer_mod.Scorer, "score_batch", limited)
    got = lark_fast.score(model, tokenizer, recs, max_tokens_per_batch=4000, progress=False)
    assert max(calls) > 1 and min(calls) == 1
    too_long = np.array([len(want["n_tokens"]) > 0 and n + 40 > 300 for n in want["n_tokens"]])
    oom = got["status"] == "out_of_memory"
    assert oom.any() and (~oom).any()
    assert all("does not fit in memory even alone" in r for r in got["reason"][oom])
    ok = ~oom
    for k in ("L", "brier", "entropy"):
        np.testing.assert_allclose(got[k][ok], want[k][ok], rtol=1e-5)
    assert too_long[oom].all()


def test_resume_and_corrupt_parts(tokenizer, tmp_path):
    model = tiny_llama()
    recs = mixed_records(30)
    run_dir = tmp_path / "run"
    full = lark_fast.score(model, tokenizer, recs, run_dir=run_dir, checkpoint_every=4, progress=False)
    parts = sorted(run_dir.glob("part-*.parquet"))
    assert len(parts) >= 7
    # a truncated part and a part whose content was edited after its checksum was taken
    parts[1].write_bytes(parts[1].read_bytes()[:100])
    import pyarrow.parquet as pq
    t = pq.read_table(parts[3])
    edited = t.set_column(t.schema.get_field_index("nll"), "nll", [[v * 2 for v in t.column("nll").to_pylist()]])
    pq.write_table(edited.replace_schema_metadata(t.schema.metadata), parts[3])
    with pytest.warns(UserWarning, match="corrupt part"):
        again = lark_fast.score(model, tokenizer, recs, run_dir=run_dir, checkpoint_every=4, progress=False)
    assert len(again.info["corrupt_parts_redone"]) == 2
    assert 0 < again.info["records_resumed"] < len(recs)
    assert again.info["scored_tokens_this_run"] < full.info["scored_tokens_this_run"]
    assert_same(again, full)
    # other settings are refused, not mixed in
    with pytest.raises(ValueError, match="other settings \\(max_length differ\\)"):
        lark_fast.score(model, tokenizer, recs, run_dir=run_dir, max_length=100, progress=False)


def test_parts_carry_their_settings(model_dir, tmp_path):
    """Parts made with another --max-length are refused even without run.json (where the settings used to
    live alone): never mixed into the table."""
    pool = write_pool(tmp_path / "pool.jsonl", mixed_records(12, seed=4))
    out = tmp_path / "s.parquet"
    args = ["score", "--model", model_dir, "--input", pool, "--output", out, "--quiet", "--checkpoint-every", "4"]
    assert main([str(a) for a in args] + ["--max-length", "64", "--keep-parts"]) == 0
    (tmp_path / "s.parquet.parts" / "run.json").unlink(missing_ok=True)
    r = run_cli(args + ["--max-length", "100"])
    assert r.returncode == 2 and "other settings (max_length differ)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


HOLD_AT_FIRST_FLUSH = """
import os, time
from lark_fast import scoring
real = scoring.RecordRows.flush
def flush(self):
    open({ready!r}, "w").close()
    deadline = time.time() + 120
    while not os.path.exists({go!r}) and time.time() < deadline:
        time.sleep(0.02)
    real(self)
scoring.RecordRows.flush = flush
"""


def test_two_runs_on_one_output(model_dir, tmp_path):
    """The second of two runs on one output fails at once, naming the first; the first finishes."""
    pool = write_pool(tmp_path / "pool.jsonl", mixed_records(12, seed=1))
    out = tmp_path / "s.parquet"
    args = ["score", "--model", model_dir, "--input", pool, "--output", out, "--quiet", "--checkpoint-every", "4"]
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = run_cli(args, prelude=HOLD_AT_FIRST_FLUSH.format(ready=str(ready), go=str(go)), wait=False)
    deadline = time.time() + 120
    while not ready.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ready.exists(), first.communicate()[1]
    second = run_cli(args)
    go.touch()
    _, err = first.communicate(timeout=300)
    assert second.returncode == 2 and f"in use by another run (pid {first.pid} on " in second.stderr, second.stderr
    assert first.returncode == 0, err
    assert len(ScoreTable.read(out)) == 12


def test_run_lock(tmp_path):
    """A lock left by a dead process is taken over; a live holder is named; the lock is re-entrant; a
    directory left with nothing but its lock goes with it."""
    run_dir = tmp_path / "s.parquet.parts"
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (run_dir / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(run_dir):
        assert json.loads((run_dir / "lock").read_text())["pid"] == os.getpid()
        with RunLock(run_dir):
            pass
        other = subprocess.run([sys.executable, "-c", f"from lark_fast.runlock import RunLock, RunLocked\n"
                                f"with RunLock({str(run_dir)!r}): pass"], capture_output=True, text=True)
        assert other.returncode != 0 and f"RunLocked: {run_dir} is in use by another run (pid {os.getpid()} on " \
            in other.stderr
    assert not run_dir.exists()


def test_run_lock_without_file_locks(tmp_path, monkeypatch):
    """Where flock is unsupported, the pid and host in the lock file decide."""
    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    run_dir = tmp_path / "s.parquet.parts"
    run_dir.mkdir()
    (run_dir / "lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(RunLocked, match=f"pid {os.getppid()} on .*delete {run_dir / 'lock'}"):
        RunLock(run_dir).__enter__()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (run_dir / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(run_dir):
        assert json.loads((run_dir / "lock").read_text())["pid"] == os.getpid()


KILL_IN_FINAL_WRITE = """
import os, signal
from lark_fast import table
def write(self, path):
    with table.atomic_write(path, "wb") as f:
        f.write(b"PAR1")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
table.ScoreTable.write = write
"""


def test_crash_and_resume(model_dir, tmp_path):
    """kill -9 at seeded random moments, three times in a row, then once inside the final write: the rerun
    gives the uninterrupted table and leaves no temporary file."""
    pool = write_pool(tmp_path / "pool.jsonl", mixed_records(60, seed=5))
    ref = tmp_path / "ref.parquet"
    assert main(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(ref), "--quiet"]) == 0

    out = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    args = ["score", "--model", model_dir, "--input", pool, "--output", out, "--quiet",
            "--checkpoint-every", "2", "--max-tokens-per-batch", "256"]
    rng = random.Random(14)
    for _ in range(3):
        target = len(list(parts.glob("part-*.parquet"))) + rng.randint(1, 6)
        proc = run_cli(args, wait=False)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < target:
            time.sleep(0.005)
        proc.kill()
        proc.communicate()
        assert not out.exists(), "the run must be killed before it finishes"
    r = run_cli(args, prelude=KILL_IN_FINAL_WRITE)
    assert r.returncode == -signal.SIGKILL and not out.exists()
    assert list(tmp_path.glob(".out.parquet.*.tmp")), "the kill must land inside the final write"

    r = run_cli(args)
    assert r.returncode == 0, r.stderr
    assert "resumed: 60 records" in r.stdout
    a, b = ScoreTable.read(out), ScoreTable.read(ref)
    assert len(a) == 60 and len(set(zip(a["problem_id"], a["candidate_id"]))) == 60
    assert_same(a, b)
    assert not list(tmp_path.rglob("*.tmp")) and not parts.exists()


def test_two_processes_equal_one(model_dir, tmp_path):
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, mixed_records(30, seed=6))
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    r = run_cli(["score", "--model", str(model_dir), "--input", str(pool), "--output", str(one), "--quiet"])
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "lark_fast.cli", "score", "--model", str(model_dir), "--input", str(pool),
                        "--output", str(two), "--quiet", "--checkpoint-every", "4", "--device", "cpu"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    man = json.loads((tmp_path / "two.manifest.json").read_text())
    assert man["info"]["world_size"] == 2
    assert_same(ScoreTable.read(two), ScoreTable.read(one))
