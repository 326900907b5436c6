"""Published formats and `--compat published` (docs/method.md §3.7, §7.3): `lark-fast score --compat published
--format lark-json` against the published scorer re-written in tests/helpers.py (its tokenisation, on a
tokenizer that adds a BOS), `lark-fast select` reading a published score file, and train.jsonl read as the
published trainer reads it."""
import json

import numpy as np
import pytest
from helpers import bos_tokenizer, make_records, published_scorer, tiny_llama, write_pool
from solver_reference import lark_rule

from lark_fast.chat import PROMPT_TOO_LONG, ChatTokenizer, PublishedChatTokenizer
from lark_fast.cli import main
from lark_fast.scores import trajectory_scores
from lark_fast.table import ScoreTable

MAX_LENGTH = 160
B = 2
FIELDS = ["candidate_id", "teacher", "L", "Brier", "rho", "g_hat"]


def compat_pool():
    """Integer ids as published pools have them, problems out of numeric order (10 sorts after 7 as a number,
    before it as a string), trajectories longer than MAX_LENGTH, and one prompt that does not fit."""
    recs = []
    for p, pid in enumerate((10, 3, 7)):
        for c, r in enumerate(make_records(3, 3, seed=p)[3 * p:3 * p + 3]):
            recs.append({**r, "problem_id": pid, "candidate_id": c})
    recs[4]["messages"][-2]["content"] = "a long question " * 12  # the prompt alone exceeds MAX_LENGTH
    recs[8]["messages"][-1]["content"] = "so we get 2 + 7 = 9 " * 12  # truncated
    return recs


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("bos_student")
    tiny_llama().save_pretrained(d)
    bos_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def run(student, tmp_path_factory):
    """One `lark-fast score --compat published --format lark-json` run and the published scorer's file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("compat")
    recs = compat_pool()
    pool = write_pool(d / "pool.jsonl", recs)
    scores = d / "scores.parquet"
    assert main(["score", "--model", str(student), "--input", str(pool), "--output", str(scores), "--compat",
                 "published", "--format", "lark-json", "--max-length", str(MAX_LENGTH), "--quiet"]) == 0
    model = AutoModelForCausalLM.from_pretrained(student).eval()
    tok = AutoTokenizer.from_pretrained(student)
    oracle = published_scorer(model, tok, recs, max_length=MAX_LENGTH, student_model=str(student))
    (d / "oracle.json").write_text(json.dumps(oracle))
    return {"dir": d, "pool": pool, "records": recs, "scores": scores, "lark": d / "scores.lark.json",
            "oracle": oracle, "model": model, "tokenizer": tok}


def test_tokenisation_is_the_published_one(run):
    tok = run["tokenizer"]
    msgs = run["records"][0]["messages"]
    bos = tok.convert_tokens_to_ids("<s>")
    ours = PublishedChatTokenizer(tok, max_length=10_000)(msgs)
    text = tok.apply_chat_template(msgs, tokenize=False)
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert ours.input_ids == tok(text).input_ids and ours.start == len(tok(prompt).input_ids)
    assert ours.input_ids[:2] == [bos, bos] and not ours.truncated  # the template's BOS and the tokenizer's
    assert ChatTokenizer(tok)(msgs).input_ids[:2] != [bos, bos]
    long = run["records"][8]["messages"]
    cut = PublishedChatTokenizer(tok, max_length=MAX_LENGTH)(long)
    text = tok.apply_chat_template(long, tokenize=False)
    assert cut.truncated and cut.input_ids == tok(text, truncation=True, max_length=MAX_LENGTH).input_ids
    assert cut.n_full == len(tok(text).input_ids) > MAX_LENGTH
    assert PublishedChatTokenizer(tok, max_length=MAX_LENGTH)(run["records"][4]["messages"]).status == PROMPT_TOO_LONG


def test_lark_json_matches_the_published_scorer(run):
    ours, want = json.loads(run["lark"].read_text()), run["oracle"]
    assert list(ours) == list(want) + ["lark_fast"]  # the published layout, extras under one key
    for k in ("method", "top_k", "n_problems", "n_scored", "n_skipped", "student_model"):
        assert ours[k] == want[k], k
    assert want["n_skipped"] == 1 and list(ours["scores"]) == list(want["scores"]) == ["3", "7", "10"]
    for pid, cands in want["scores"].items():
        got = ours["scores"][pid]
        assert len(got) == len(cands)
        for g, w in zip(got, cands):
            assert list(g) == FIELDS and g["candidate_id"] == w["candidate_id"] and type(g["candidate_id"]) is int
            assert g["teacher"] == w["teacher"]
            for k in ("L", "Brier", "rho", "g_hat"):
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-5), (pid, g["candidate_id"], k)
    extra = ours["lark_fast"]
    assert extra["compat"] == "published" and extra["brier"] == "brier_top50"
    assert [s["status"] for s in extra["skipped"]] == [PROMPT_TOO_LONG] and extra["skipped"][0]["problem_id"] == 3
    assert any(c["truncated"] for cs in extra["candidates"].values() for c in cs)
    man = json.loads((run["dir"] / "scores.manifest.json").read_text())
    assert man["options"]["compat"] == "published" and man["info"]["compat"] == "published"


def test_exact_default_differs_on_this_tokenizer(run):
    """The same model and pool without --compat: other token ids (one BOS), so other numbers."""
    import lark_fast
    table = lark_fast.score(run["model"], run["tokenizer"], run["records"], max_length=MAX_LENGTH, progress=False)
    want = [c["L"] for cs in run["oracle"]["scores"].values() for c in cs]
    assert (table["status"] == "ok").sum() == 8
    L = {(p, c): v for p, c, v in zip(table["problem_id"], table["candidate_id"], table["L"])}
    got = [L[(pid, str(c["candidate_id"]))] for pid, cs in run["oracle"]["scores"].items() for c in cs]
    assert np.max(np.abs(np.array(got) - want)) > 1e-3


def test_selection_from_the_file_is_the_published_rule(run):
    """select --scores FILE.lark.json: the published rule on the file's g_hat, the same candidates as the
    published scorer's own file gives, and the same train.jsonl as from the compat score table."""
    d = run["dir"]
    out = {}
    for name, scores in (("file", run["lark"]), ("table", run["scores"]), ("oracle", d / "oracle.json")):
        out[name] = d / f"train_{name}.jsonl"
        assert main(["select", "--scores", str(scores), "--input", str(run["pool"]), "--B", str(B),
                     "--output", str(out[name])]) == 0
    assert out["file"].read_bytes() == out["table"].read_bytes()
    got = {(r["meta"]["problem_id"], r["meta"]["candidate_id"]): r["meta"]["train_weight"]
           for r in map(json.loads, out["file"].read_text().splitlines())}
    for source, tol in ((json.loads(run["lark"].read_text()), 1e-12), (run["oracle"], 1e-4)):
        want = {}
        for pid, cands in source["scores"].items():
            w = lark_rule(np.array([c["g_hat"] for c in cands]), [0, len(cands)], B)
            want.update({(pid, str(c["candidate_id"])): x for c, x in zip(cands, w) if x > 0})
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) <= tol for k in want)
    oracle = {(r["meta"]["problem_id"], r["meta"]["candidate_id"]): r["meta"]["train_weight"]
              for r in map(json.loads, out["oracle"].read_text().splitlines())}
    assert oracle.keys() == got.keys()


def published_trainer_rows(path):
    """train.jsonl as the published trainer reads it: ex["messages"] and ex["meta"][...] (train_weight
    defaulting to 1.0)."""
    rows = []
    for line in path.read_text().splitlines():
        ex = json.loads(line)
        meta = ex.get("meta", {})
        rows.append({"messages": ex["messages"], "problem_id": meta["problem_id"], "candidate_id": meta["candidate_id"],
                     "teacher": meta["teacher"], "score": float(meta["score"]),
                     "train_weight": float(meta.get("train_weight", 1.0))})
    return rows


def test_train_set_reads_as_the_published_trainer_reads_it(run):
    train = run["dir"] / "train_reader.jsonl"
    assert main(["select", "--scores", str(run["lark"]), "--input", str(run["pool"]), "--B", str(B),
                 "--output", str(train)]) == 0
    rows = published_trainer_rows(train)
    pool = {(str(r["problem_id"]), str(r["candidate_id"])): r for r in run["records"]}
    table = ScoreTable.read(run["scores"])
    g = {(p, c): v for p, c, v in zip(table["problem_id"], table["candidate_id"], table["g_hat"])}
    totals = {}
    for r in rows:
        rec = pool[(r["problem_id"], r["candidate_id"])]
        assert r["messages"] == rec["messages"] and r["teacher"] == rec["teacher"]
        assert r["messages"][-1]["role"] == "assistant" and r["train_weight"] > 0
        assert r["score"] == g[(r["problem_id"], r["candidate_id"])]
        totals[r["problem_id"]] = totals.get(r["problem_id"], 0) + r["train_weight"]
        text = run["tokenizer"].apply_chat_template(r["messages"], tokenize=False)  # what the trainer renders
        assert text.endswith(rec["messages"][-1]["content"] + "<|im_end|>\n")
    assert sorted(totals) == ["10", "3", "7"] and all(abs(t - 1) < 1e-9 for t in totals.values())


def test_exact_lark_json_keeps_the_layout(student, tmp_path):
    """Without --compat the same layout with the exact Brier and top_k = the vocabulary size; string ids stay
    strings."""
    recs = make_records(2, 3)
    pool = write_pool(tmp_path / "pool.jsonl", recs)
    scores = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(student), "--input", str(pool), "--output", str(scores), "--format",
                 "lark-json", "--max-length", str(MAX_LENGTH), "--quiet"]) == 0
    lark = json.loads((tmp_path / "scores.lark.json").read_text())
    table = ScoreTable.read(scores)
    assert lark["top_k"] == 1003 and lark["lark_fast"]["brier"] == "exact" and lark["n_skipped"] == 0
    cands = [c for cs in lark["scores"].values() for c in cs]
    assert [c["candidate_id"] for c in cands] == [r["candidate_id"] for r in recs]
    np.testing.assert_array_equal([c["Brier"] for c in cands], table["brier"])
    np.testing.assert_array_equal([c["g_hat"] for c in cands], table["g_hat"])
    extra = [c for cs in lark["lark_fast"]["candidates"].values() for c in cs]
    np.testing.assert_array_equal([c["brier_top50"] for c in extra], table["brier_top50"])


def test_compat_rho_from_the_top_k_brier():
    n, nll, brier, top = np.array([2, 4]), np.array([1.0, 2.0]), np.array([0.5, 0.2]), np.array([0.8, 0.4])
    out = trajectory_scores(n, nll, brier, np.zeros(2), np.zeros(2), top, compat="published")
    np.testing.assert_allclose(out["rho"], (top / n) / (nll / n))
    np.testing.assert_allclose(out["brier"], brier / n)
    with pytest.raises(ValueError, match="needs topk > 0"):
        trajectory_scores(n, nll, brier, np.zeros(2), np.zeros(2), None, compat="published")


@pytest.fixture
def small(tmp_path):
    recs = [{**r, "problem_id": 5, "candidate_id": i} for i, r in enumerate(make_records(1, 3))]
    pool = write_pool(tmp_path / "pool.jsonl", recs)
    cands = [{"candidate_id": i, "teacher": r["teacher"], "L": 1.0 + i, "Brier": 0.5, "rho": 0.5 / (1 + i),
              "g_hat": 0.3 - 0.1 * i} for i, r in enumerate(recs)]
    return pool, {"method": "lark_ghat", "student_model": "s", "top_k": 50, "n_problems": 1, "n_scored": 3,
                  "n_skipped": 0, "scores": {"5": cands}}


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["scores"]["5"][1].pop("g_hat"), "scores['5'][1]: missing field 'g_hat'"),
    (lambda f: f["scores"]["5"][2].update(L="1.0"), "scores['5'][2].L: expected a number, got str"),
    (lambda f: f["scores"]["5"][2].update(candidate_id=0), "candidate 0 of problem '5' is listed twice"),
    (lambda f: f.update(scores=[[0.1, 0.2]]), "not a LARK score file"),
    (lambda f: f["scores"]["5"][0].update(candidate_id=9), "not in the pool"),
])
def test_select_names_what_is_wrong_with_a_score_file(small, tmp_path, capsys, edit, message):
    pool, obj = small
    edit(obj)
    path = tmp_path / "published.json"
    path.write_text(json.dumps(obj))
    train = tmp_path / "train.jsonl"
    assert main(["select", "--scores", str(path), "--input", str(pool), "--B", "2", "--output", str(train)]) == 2
    err = capsys.readouterr().err
    assert message in err and (str(path) in err or "5/9" in err), err
    assert not train.exists()


def test_lark_json_refuses_another_pool():
    from lark_fast.lark_json import to_lark_json
    recs = [{**r, "problem_id": 1, "candidate_id": i} for i, r in enumerate(make_records(1, 2))]
    table = ScoreTable({"problem_id": ["1", "1"], "candidate_id": ["0", "1"], "teacher": ["T0", "T1"],
                        "status": ["ok", "ok"], "L": [1.0, 2.0], "brier": [0.5, 0.5], "rho": [0.5, 0.25],
                        "g_hat": [0.2, 0.1]})
    out = to_lark_json(table, recs, student_model="s", vocab_size=7)
    assert [c["candidate_id"] for c in out["scores"]["1"]] == [0, 1] and out["top_k"] == 7
    with pytest.raises(ValueError, match="line 2 is 1/5, the score table's row 1 is 1/1: not the pool"):
        to_lark_json(table, [recs[0], {**recs[1], "candidate_id": 5}], student_model="s", vocab_size=7)
    with pytest.raises(ValueError, match="has 1 valid records, the score table 2 rows"):
        to_lark_json(table, recs[:1], student_model="s", vocab_size=7)


def test_parts_of_the_other_mode_are_refused(run, tmp_path):
    import lark_fast
    recs, kw = run["records"][:3], {"max_length": MAX_LENGTH, "progress": False, "run_dir": tmp_path / "parts"}
    lark_fast.score(run["model"], run["tokenizer"], recs, **kw)
    with pytest.raises(ValueError, match="other settings \\(compat differ\\)"):
        lark_fast.score(run["model"], run["tokenizer"], recs, compat="published", **kw)


def test_select_checks_the_pool_against_our_lark_json(run, tmp_path, capsys):
    """Our lark-json carries each candidate's content_hash: a pool with other messages under the same ids
    is refused, as with the score table."""
    recs = [dict(r) for r in run["records"]]
    recs[0] = {**recs[0], "messages": recs[0]["messages"][:-1] + [{"role": "assistant", "content": "other"}]}
    swapped = write_pool(tmp_path / "swapped.jsonl", recs)
    train = tmp_path / "train.jsonl"
    assert main(["select", "--scores", str(run["lark"]), "--input", str(swapped), "--output", str(train)]) == 2
    assert "differ from the ones that were scored" in capsys.readouterr().err and not train.exists()
