"""Diagnostics: exact weight restore, within-problem Spearman and bootstrap on synthetic cases with known
answers, the measured utility against an independent oracle (a deep copy stepped by hand, float64 losses from
full logits), resume, loss curves, and the command line."""
import copy
import json

import numpy as np
import pytest
import torch
from helpers import make_records, oracle_table, tiny_llama

import lark_fast
from lark_fast.chat import ChatTokenizer
from lark_fast.cli import main
from lark_fast.diagnose import (WeightSnapshot, arm_weights, loss_curves, measure_utility, proxy_correlations,
                                sample_problems)
from lark_fast.rank_correlation import bootstrap_interval, spearman_per_problem, spearman_within_problems


def params_equal(model, saved):
    return all(torch.equal(p, saved[n]) for n, p in model.named_parameters())


def copy_params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [False, True])
def test_snapshot_restores_weights_bitwise(tie):
    model = tiny_llama(tie=tie)
    before = copy_params(model)
    snap = WeightSnapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    model(input_ids=torch.arange(20)[None], labels=torch.arange(20)[None]).loss.backward()
    opt.step()
    assert not params_equal(model, before)
    snap.restore()
    assert params_equal(model, before) and all(p.grad is None for p in model.parameters())


def test_spearman_within_problems_known_answers():
    pids = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 2 + ["e"] * 3
    utility = np.array([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 5, 5, 5], dtype=float)
    proxy = np.array([10, 20, 30, 40, 4, 3, 2, 1, 1, 3, 2, 4, 1, 2, 1, 2, 3], dtype=float)
    # a: +1, b: -1, c: 1 - 6 * 2 / (4 * 15) = 0.8; d: two candidates and e: constant utility are left out
    problems, values = spearman_per_problem(pids, proxy, utility)
    assert problems == ["a", "b", "c"] and values == pytest.approx([1.0, -1.0, 0.8])
    assert spearman_within_problems(pids, proxy, utility) == pytest.approx(0.8 / 3)
    ties = spearman_per_problem(["p"] * 4, np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]))[1]
    assert ties == pytest.approx([np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1]])  # ties get their mean rank


def test_bootstrap_interval():
    values = np.array([0.2, 0.4, 0.9, -0.1, 0.5])
    low, high = bootstrap_interval(values, resamples=2000, seed=1)
    assert low < values.mean() < high and low >= values.min() and high <= values.max()
    assert (low, high) == bootstrap_interval(values, resamples=2000, seed=1)
    assert bootstrap_interval(np.full(6, 0.3)) == pytest.approx((0.3, 0.3))
    assert np.isnan(bootstrap_interval(np.zeros(0))[0])


def test_proxy_correlations_orient_each_proxy():
    """A proxy equal to the utility correlates +1 if higher is better (g_hat), -1 if lower is better (rsr)."""
    pids = np.repeat(["p0", "p1", "p2"], 4)
    utility = np.array([0.1, 0.3, 0.2, 0.4, 0.0, -0.2, 0.5, 0.1, 0.3, 0.2, 0.1, 0.0])
    cands = [f"c{i}" for i in range(12)]
    table = lark_fast.ScoreTable({"problem_id": pids, "candidate_id": cands, "status": ["ok"] * 12,
                                  "g_hat": utility, "rsr": utility, "n_tokens": np.arange(12)})
    rows = proxy_correlations([{"problem_id": p, "candidate_id": c, "utility": u}
                               for p, c, u in zip(pids, cands, utility)], table, resamples=200)
    by = {r["proxy"]: r for r in rows}
    assert set(by) == {"lark", "rsr", "length", "random"}
    assert by["lark"]["spearman"] == pytest.approx(1.0) and by["lark"]["ci_low"] == pytest.approx(1.0)
    assert by["rsr"]["spearman"] == pytest.approx(-1.0) and by["lark"]["problems"] == 3


@pytest.fixture(scope="module")
def setup():
    from helpers import byte_tokenizer
    tok = byte_tokenizer()
    model = tiny_llama(vocab_size=300, hidden_size=48, seed=1)
    records = make_records(n_problems=6, per_problem=3, seed=2)
    scores = lark_fast.score(model, tok, records, topk=0, progress=False, methods=["random"])
    return model, tok, records, scores


def oracle_utility(model, tok, record, heldout, lr, steps):
    """Held-out L before minus after `steps` hand-written SGD steps on a deep copy (float64 losses, full logits)."""
    m = copy.deepcopy(model)
    before = oracle_table(m, tok, heldout)["L"].mean()
    t = ChatTokenizer(tok, max_length=m.config.max_position_embeddings)(record["messages"])
    ids = torch.tensor([t.input_ids])
    for _ in range(steps):
        logits = m(input_ids=ids).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[t.start - 1:-1], ids[0, t.start:])
        grads = torch.autograd.grad(loss, list(m.parameters()))
        with torch.no_grad():
            for p, g in zip(m.parameters(), grads):
                p -= lr * g
    return before - oracle_table(m, tok, heldout)["L"].mean()


def test_utility_matches_the_oracle_and_restores_the_weights(setup):
    model, tok, records, scores = setup
    heldout = [r for r in records if r["problem_id"] in ("prob-4", "prob-5")]
    saved = copy_params(model)
    result = measure_utility(model, tok, records, scores, heldout, problems=["prob-1"], steps=2, lr=0.05,
                             progress=False)
    assert params_equal(model, saved) and not model.training
    rows = result["candidates"]
    assert [r["candidate_id"] for r in rows] == ["cand-0", "cand-1", "cand-2"]
    by_key = {(x["problem_id"], x["candidate_id"]): x for x in records}
    for r in rows:
        record = by_key[(r["problem_id"], r["candidate_id"])]
        expected = oracle_utility(model, tok, record, heldout, 0.05, 2)
        assert abs(expected) > 1e-3 and r["utility"] == pytest.approx(expected, abs=3e-5)
    assert result["heldout_before"] == pytest.approx(oracle_table(model, tok, heldout)["L"].mean(), rel=1e-5)


def test_killed_utility_run_resumes(setup, tmp_path, monkeypatch):
    model, tok, records, scores = setup
    heldout = [r for r in records if r["problem_id"] == "prob-5"]
    problems = sample_problems(scores, 2, seed=0)
    assert len(problems) == 2 and problems == sample_problems(scores, 2, seed=0)
    kw = dict(problems=problems, lr=0.05, run_dir=tmp_path / "run", progress=False)
    whole = measure_utility(model, tok, records, scores, heldout, **{**kw, "run_dir": tmp_path / "whole"})
    saved = copy_params(model)
    import lark_fast.diagnose.utility as utility
    real, calls = utility.candidate_loss, []

    def dies(*a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(utility, "candidate_loss", dies)
    with pytest.raises(KeyboardInterrupt):
        measure_utility(model, tok, records, scores, heldout, **kw)
    assert params_equal(model, saved)  # restored although the run died after a step
    monkeypatch.setattr(utility, "candidate_loss", real)
    resumed = measure_utility(model, tok, records, scores, heldout, **kw)
    assert resumed["candidates"] == whole["candidates"]
    with pytest.raises(ValueError, match="other settings .*lr"):
        measure_utility(model, tok, records, scores, heldout, **{**kw, "lr": 0.01})


def test_arm_weights(setup):
    _, _, _, scores = setup
    lark = arm_weights(scores, "lark", 2)
    uniform = arm_weights(scores, "uniform", 2)
    assert np.array_equal(lark > 0, uniform > 0) and set(np.round(uniform[uniform > 0], 12)) <= {0.5, 1.0}
    rand = arm_weights(scores, "random", 2)
    assert (rand > 0).sum() == 12 and np.allclose(np.add.reduceat(rand, np.arange(0, 18, 3)), 1.0)
    with pytest.raises(ValueError, match="arm 'best'"):
        arm_weights(scores, "best", 2)
    with pytest.raises(ValueError, match="--methods ifd"):
        arm_weights(scores, "ifd", 2)


def test_loss_curves(setup, tmp_path):
    model, tok, records, scores = setup
    train = [r for r in records if r["problem_id"] not in ("prob-4", "prob-5")]
    heldout = [r for r in records if r["problem_id"] in ("prob-4", "prob-5")]
    saved = copy_params(model)
    kw = dict(B=2, steps=3, lr=1e-2, eval_every=2, progress=False, run_dir=tmp_path / "run")
    result = loss_curves(model, tok, train, scores, heldout, arms=("lark", "uniform", "random"),
                         save_models=tmp_path / "models", **kw)
    rows = result["rows"]
    again = loss_curves(model, tok, train, scores, heldout, arms=("random", "lark"), **kw)  # from the checkpoint
    assert again["seconds"] == {} and again["rows"] == [r for r in rows if r["arm"] == "random"] + rows[:4]
    assert params_equal(model, saved)
    assert [(r["arm"], r["step"]) for r in rows] == [(a, s) for a in ("lark", "uniform", "random") for s in range(4)]
    assert len({r["heldout_loss"] for r in rows if r["step"] == 0}) == 1
    assert all((r["heldout_loss"] is not None) == (r["step"] in (0, 2, 3)) for r in rows)
    assert all(r["train_loss"] > 0 for r in rows if r["step"] > 0)
    assert all(r["heldout_loss"] < rows[0]["heldout_loss"] for r in rows if r["step"] == 3)
    assert result["selected"] == {"lark": 8, "uniform": 8, "random": 8}
    assert (tmp_path / "models" / "random" / "config.json").is_file()


def test_diagnose_commands(model_dir, tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in make_records(5, 4, seed=3)))
    out = tmp_path / "diag"
    assert main(["diagnose", "utility", "--model", str(model_dir), "--input", str(pool), "--output", str(out),
                 "--problems", "2", "--heldout-size", "4", "--sketch-dim", "4", "--bootstrap", "100", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "lark_grad" in text and "ifd" in text
    summary = json.loads((out / "utility.json").read_text())
    assert len(summary["problems"]) == 2 and summary["heldout_trajectories"] == 4
    assert {r["proxy"] for r in summary["correlations"]} >= {"lark", "rho", "lark_grad", "rsr", "ifd",
                                                             "global_naturalness", "length", "random"}
    assert len((out / "candidates.csv").read_text().splitlines()) == 9 and not (out / "utility.parts").exists()
    assert main(["diagnose", "loss-curves", "--model", str(model_dir), "--input", str(pool), "--output", str(out),
                 "--scores", str(out / "scores.parquet"), "--heldout-problems", "1", "--steps", "2",
                 "--arms", "lark,rsr,ifd", "--quiet"]) == 0
    curves = (out / "loss_curves.csv").read_text().splitlines()
    assert curves[0] == "arm,step,train_loss,heldout_loss" and len(curves) == 1 + 3 * 3
    assert main(["diagnose", "loss-curves", "--model", str(model_dir), "--input", str(pool), "--output", str(out),
                 "--heldout-problems", "5"]) == 2
