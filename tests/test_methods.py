"""Selection proxies against oracles computed from the tiny student's own logits."""
import numpy as np
import pytest
import torch
from helpers import make_records, oracle_table, tiny_llama

import lark_fast
from lark_fast.methods import METHODS, random_scores, ranking_score, steps
from lark_fast.table import ScoreTable

STEPPED = ["First we add.\n\nThen 2 + 2 = 4.\n\nCheck: 4 - 2 = 2.\n\nSo 4.\n\n\nDone, the answer is 4.",
           "One line only, no steps.",
           "a\n\nb\n\nc\n\nd\n\ne\n\nf\n\ng"]


def records():
    return [{"problem_id": f"p{i % 2}", "candidate_id": f"c{i}", "teacher": "T",
             "messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": f"What is {i}+2?"},
                          {"role": "assistant", "content": text}]} for i, text in enumerate(STEPPED)]


def nll_of(model, ids, positions):
    """nll of ids[t] for t in positions, from the model's own logits (float64)."""
    with torch.no_grad():
        z = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(z, -1)
    return np.array([-lp[t - 1, ids[t]].item() for t in positions])


def find_last(haystack, needle):
    for s in range(len(haystack) - len(needle), -1, -1):
        if haystack[s:s + len(needle)] == needle:
            return s
    raise AssertionError("not found")


def test_steps_split_on_blank_lines():
    text = STEPPED[0]
    assert [text[a:b] for a, b in steps(text)] == ["First we add.", "Then 2 + 2 = 4.", "Check: 4 - 2 = 2.", "So 4.",
                                                    "Done, the answer is 4."]
    assert steps("  \n\n x \n \n") == [(5, 6)] and steps("") == []


def test_ifd_and_local_naturalness_match_oracles(tokenizer):
    model = tiny_llama(seed=4)
    recs = records()
    table = lark_fast.score(model, tokenizer, recs, methods=["ifd", "local_naturalness", "random"], progress=False)
    ref = oracle_table(model, tokenizer, recs)
    np.testing.assert_allclose(table["global_naturalness"], -ref["L"], rtol=1e-5)
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    for i, r in enumerate(recs):
        answer = r["messages"][-1]["content"]
        span = tokenizer.encode(answer, add_special_tokens=False) + tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
        # IFD: the same assistant tokens after the prompt / after the bare assistant header
        alone = nll_of(model, header + span, range(len(header), len(header) + len(span)))
        assert table["ifd"][i] == pytest.approx(ref["L"][i] / alone.mean(), rel=1e-5)
        # local naturalness: each step after the prompt and at most 4 previous steps
        parts = [p for p in answer.replace("\n\n\n", "\n\n").split("\n\n")]
        total, count = 0.0, 0
        for j, part in enumerate(parts):
            ctx = answer[answer.index(parts[max(0, j - 4)]) if j else 0:]
            window = ctx[: ctx.index(part) + len(part)] if j else part
            msgs = r["messages"][:-1] + [{"role": "assistant", "content": window}]
            ids = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False)
            at = find_last(ids, tokenizer.encode(part, add_special_tokens=False))
            n = len(tokenizer.encode(part, add_special_tokens=False))
            total += nll_of(model, ids, range(at, at + n)).sum()
            count += n
        assert table["local_naturalness"][i] == pytest.approx(-total / count, rel=1e-5)
    assert np.array_equal(table["random"], random_scores(table["problem_id"], table["candidate_id"]))


def test_random_is_seeded_and_order_free():
    a = random_scores(["p", "q", "p"], ["a", "b", "c"], seed=1)
    b = random_scores(["p", "p", "q"], ["c", "a", "b"], seed=1)
    assert np.array_equal(a[[2, 0, 1]], b) and ((a >= 0) & (a < 1)).all()
    assert not np.array_equal(a, random_scores(["p", "q", "p"], ["a", "b", "c"], seed=2))


def test_selection_respects_each_direction():
    t = ScoreTable({"problem_id": ["p"] * 4, "candidate_id": list("abcd"), "status": ["ok"] * 4,
                    "g_hat": [0.1, 0.4, 0.3, 0.2], "rsr": [5.0, 1.0, 9.0, 2.0], "ifd": [0.9, 0.5, 0.7, 1.2]})
    for by, best in (("lark", {1, 2}), ("rsr", {1, 3}), ("ifd", {3, 0})):
        w = lark_fast.select(t, B=2, by=by)
        assert set(np.flatnonzero(w > 0)) == best, by
    assert np.array_equal(ranking_score(t, "rsr"), -t["rsr"])
    with pytest.raises(ValueError, match="score with --methods local_naturalness"):
        lark_fast.select(t, by="local_naturalness")
    with pytest.raises(ValueError, match="unknown method"):
        lark_fast.select(t, by="vibes")


def test_brier_proxy_ranks_by_the_oracle_brier(tokenizer):
    model = tiny_llama(seed=2)
    recs = make_records(n_problems=3, per_problem=4, seed=2)
    table = lark_fast.score(model, tokenizer, recs, progress=False)
    ref = oracle_table(model, tokenizer, recs)
    np.testing.assert_allclose(ranking_score(table, "brier"), ref["brier"], rtol=1e-5)
    w = lark_fast.select(table, B=2, by="brier")
    pids = np.array([r["problem_id"] for r in recs])
    for p in set(pids):
        idx = np.flatnonzero(pids == p)
        chosen = set(idx[w[idx] > 0])
        assert chosen and chosen <= set(idx[np.argsort(-ref["brier"][idx])[:2]])


def test_registry_is_complete():
    assert set(METHODS) == {"lark", "rho", "global_naturalness", "rsr", "entropy", "brier", "topk_entropy", "length",
                            "random", "ifd", "local_naturalness", "lark_grad", "rho_grad"}
    assert METHODS["rsr"].direction == -1 and METHODS["lark"].direction == 1
