"""End-to-end scoring on tiny random students against statistics computed from the model's own logits."""
import math

import numpy as np
import pytest
import torch
from helpers import LargestAllocation, assert_matches, make_records, oracle_table, tiny_llama

import lark_fast
from lark_fast.scorer import Scorer


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scores_match_the_models_own_logits(tokenizer, backend):
    model = tiny_llama()
    recs = make_records()
    table = lark_fast.score(model, tokenizer, recs, batch_size=4, progress=False, backend=backend)
    assert list(table["problem_id"]) == [r["problem_id"] for r in recs]
    assert (table["status"] == "ok").all()
    assert_matches(table, oracle_table(model, tokenizer, recs))
    assert table.column_names[:12] == ["problem_id", "candidate_id", "teacher", "n_tokens", "truncated", "status",
                                       "L", "brier", "rho", "g_hat", "entropy", "rsr"]


def test_batching_does_not_change_scores(tokenizer):
    model = tiny_llama(seed=3)
    recs = make_records(n_problems=5, per_problem=4, seed=1)  # lengths from a few tokens to ~500
    one = lark_fast.score(model, tokenizer, recs, batch_size=1, progress=False)
    for bs in (3, 16):
        many = lark_fast.score(model, tokenizer, recs, batch_size=bs, progress=False)
        for k in ("L", "brier", "rho", "g_hat", "entropy", "rsr", "brier_top50"):
            np.testing.assert_allclose(many[k], one[k], rtol=1e-5, atol=1e-7, err_msg=f"{k} batch {bs}")
        assert np.array_equal(many["n_tokens"], one["n_tokens"])


def _arch(name):
    import transformers as tf
    common = dict(vocab_size=517, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.3)
    if name == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(head_dim=12, final_logit_softcapping=3.0, **common))
    if name == "cohere":
        return tf.CohereForCausalLM(tf.CohereConfig(logit_scale=0.25, **common))
    if name == "granite":
        return tf.GraniteForCausalLM(tf.GraniteConfig(logits_scaling=4.0, **common))
    if name == "phi":  # LM head with a bias
        return tf.PhiForCausalLM(tf.PhiConfig(**common))
    if name == "gpt2":  # Conv1D blocks, tied head
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=517, n_embd=48, n_layer=2, n_head=4, n_positions=1024,
                                                initializer_range=0.3))
    if name == "llama-tied":
        return tiny_llama(vocab_size=517, hidden_size=48, tie=True)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["gemma2", "cohere", "granite", "phi", "gpt2", "llama-tied"])
def test_lm_head_variants(tokenizer, name):
    torch.manual_seed(0)
    model = _arch(name).eval()
    if name == "phi":
        torch.nn.init.normal_(model.lm_head.bias, std=1.0)
    recs = make_records(n_problems=2, per_problem=2)
    table = lark_fast.score(model, tokenizer, recs, batch_size=2, progress=False)
    assert_matches(table, oracle_table(model, tokenizer, recs))


def test_unknown_logit_transform_fails_loudly(tokenizer):
    model = tiny_llama()
    original = model.forward

    def forward(*a, **kw):
        out = original(*a, **kw)
        out.logits = out.logits * 2.0  # something lark_fast cannot know about
        return out

    model.forward = forward
    with pytest.raises(RuntimeError, match="differ from the model's own"):
        lark_fast.score(model, tokenizer, make_records(1, 1), progress=False)


def test_unscorable_records_keep_their_rows(tokenizer):
    model = tiny_llama()
    recs = make_records(2, 2)
    recs[1]["messages"][-1]["content"] = "   "
    recs.insert(2, {"problem_id": "bad"})  # not a record: an issue, no row
    long = "word " * 300
    recs.append({"problem_id": "prob-0", "candidate_id": "long", "teacher": "T",
                 "messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "x"}]})
    table = lark_fast.score(model, tokenizer, recs, max_length=200, progress=False)
    assert len(table) == 5 and len(table.issues) == 1 and table.issues[0].line == 3
    assert list(table["status"]) == ["ok", "empty_assistant", "ok", "ok", "prompt_too_long"]
    assert table["reason"][1] and table["reason"][4] and np.isnan(table["L"][1]) and np.isnan(table["g_hat"][4])
    assert table["n_tokens"][1] == 0 and table["truncated"][4]
    ok = [0, 2, 3]
    ref = oracle_table(model, tokenizer, [recs[0], recs[3], recs[4]], max_length=200)
    for k in ("L", "brier", "entropy"):
        np.testing.assert_allclose(table[k][ok], ref[k], rtol=1e-5)
    # g_hat of prob-0 only uses its valid candidates (rows 0 and 1; row 1 is empty)
    assert table["g_hat"][0] == pytest.approx(table["brier"][0] / table["L"][0])


def test_truncated_records_are_flagged_and_scored(tokenizer):
    model = tiny_llama()
    recs = make_records(2, 3, seed=4)
    table = lark_fast.score(model, tokenizer, recs, max_length=128, progress=False)
    ref = oracle_table(model, tokenizer, recs, max_length=128)
    assert table["truncated"].any() and not table["truncated"].all() and (table["status"] == "ok").all()
    assert (table["n_tokens"] < 128).all()
    assert_matches(table, ref)


def test_nonfinite_statistics_get_a_status(tokenizer):
    model = tiny_llama()
    z = tokenizer.convert_tokens_to_ids("Z")
    with torch.no_grad():
        model.model.embed_tokens.weight[z] = float("nan")
    recs = make_records(1, 2)
    recs[1]["messages"][-1]["content"] = "Z marks the spot"
    table = lark_fast.score(model, tokenizer, recs, progress=False, verify_head=False)
    assert list(table["status"]) == ["ok", "nonfinite"] and "non-finite" in table["reason"][1]
    assert np.isfinite(table["g_hat"][0]) and np.isnan(table["g_hat"][1])


def test_scoring_never_allocates_tokens_by_vocab(tokenizer):
    V = 200003
    model = tiny_llama(vocab_size=V, hidden_size=8, layers=1)
    recs = [{"problem_id": "p", "candidate_id": "c", "teacher": "T",
             "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "abc " * 700}]}]
    with LargestAllocation() as probe:
        table = lark_fast.score(model, tokenizer, recs, progress=False)
    n = int(table["n_tokens"][0])
    assert n > 2000 and table["status"][0] == "ok"
    assert probe.max_bytes < n * V * 4 / 8, (probe.max_bytes, n * V * 4)


def test_ignores_model_training_mode_and_restores_it(tokenizer):
    model = tiny_llama()
    model.train()
    recs = make_records(1, 2)
    a = lark_fast.score(model, tokenizer, recs, progress=False)
    assert model.training
    b = lark_fast.score(model.eval(), tokenizer, recs, progress=False)
    np.testing.assert_allclose(a["L"], b["L"], rtol=1e-6)
    assert math.isfinite(a["L"][0])


def test_bad_calls_say_why(tokenizer):
    model = tiny_llama()
    with pytest.warns(UserWarning, match="max_length=4096 is above LlamaForCausalLM's context length \\(2048\\)"):
        Scorer(model, tokenizer, max_length=4096)
    with pytest.raises(TypeError, match="a single record"):
        lark_fast.score(model, tokenizer, make_records(1, 1)[0], progress=False)
    with pytest.raises(ValueError, match="no valid records: 2 bad, the first: <records>:1: problem_id: missing"):
        lark_fast.score(model, tokenizer, [{"x": 1}, {"y": 2}], progress=False)
