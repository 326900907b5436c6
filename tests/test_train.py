"""Training integration: packing, the Trainer's per-step normaliser, the TRL schema, re-scoring.

The oracle is written here: every record run alone through the HF model with its full logits, the
float64 mean nll of its assistant span (token t predicted from position t - 1), weighted and divided
by the number of problems.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_records, make_trainer, published, tiny_llama

import lark_fast
from lark_fast.chat import ChatTokenizer
from lark_fast.select import write_train_set
from lark_fast.train import (AnchorRefreshCallback, LarkScorer, PackedCollator, WeightedSFTDataset,
                             read_train_set)


def oracle_loss(model, tokenizer, records, weights, n_problems):
    """sum_k q_k mean_t nll_kt / n_problems, each record alone, float64 cross-entropy on full logits."""
    chat = ChatTokenizer(tokenizer)
    total = 0.0
    for r, q in zip(records, weights):
        if q == 0:
            continue
        t = chat(r["messages"])
        logits = model(input_ids=torch.tensor([t.input_ids])).logits[0].double()
        targets = torch.tensor(t.input_ids[t.start:])
        nll = torch.nn.functional.cross_entropy(logits[t.start - 1:-1], targets, reduction="mean")
        total = total + q * nll
    return total / n_problems


def param_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def setup(tokenizer):
    records = make_records(n_problems=3, per_problem=3, seed=1)
    weights = [0.5, 0.0, 0.5, 1.0, 0.0, 0.0, 0.2, 0.3, 0.5]
    return tokenizer, records, weights


def test_collator_layout(setup):
    tok, records, weights = setup
    ds = WeightedSFTDataset(published(records, weights), tok)
    assert len(ds) == 3 and ds.problem_ids == ["prob-0", "prob-1", "prob-2"]
    batch = PackedCollator()([ds[0], ds[2]])
    chat = ChatTokenizer(tok)
    kept = [records[i] for i in (0, 2, 6, 7, 8)]  # weight-0 trajectories are left out
    seqs = [chat(r["messages"]) for r in kept]
    assert batch["cu_seqlens"].tolist() == np.cumsum([0] + [len(s.input_ids) for s in seqs]).tolist()
    assert batch["input_ids"][0].tolist() == [i for s in seqs for i in s.input_ids]
    assert batch["position_ids"][0].tolist() == [p for s in seqs for p in range(len(s.input_ids))]
    assert batch["problems"].tolist() == [0, 2]
    for k, s in enumerate(seqs):
        a, b = int(batch["cu_seqlens"][k]), int(batch["cu_seqlens"][k + 1])
        lab, w = batch["labels"][0, a:b], batch["token_weights"][0, a:b]
        assert lab[: s.start].eq(-100).all() and lab[s.start:].tolist() == s.input_ids[s.start:]
        assert w[: s.start].eq(0).all()
        q = weights[records.index(kept[k])]
        assert abs(w.sum().item() - q) < 1e-6  # "mean": a trajectory carries its weight q in total
    summed = PackedCollator("sum")([ds[0]])
    assert summed["token_weights"][0].max().item() == pytest.approx(0.5)
    only_zero = PackedCollator()([ds[1] | {"weight": [0.0, 0.0, 0.0]}])
    assert only_zero["token_weights"].sum() == 0 and len(only_zero["cu_seqlens"]) == 2


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_row_equals_records_alone(setup, tmp_path, checkpointing):
    """Loss and every parameter gradient of one packed row equal the records run alone: no attention
    crosses a record, also when activation checkpointing recomputes the forward in the backward."""
    tok, records, weights = setup
    model = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05)
    ds = WeightedSFTDataset(published(records, weights), tok)
    trainer = make_trainer(model, ds, tmp_path)
    batch = PackedCollator()([ds[i] for i in range(3)])
    model.zero_grad()
    ref = oracle_loss(model, tok, records, weights, 3)
    ref.backward()
    theirs = param_grads(model)

    def close(ours):
        return ours.keys() == theirs.keys() and all(
            (ours[n] - theirs[n]).abs().max().item() <= 1e-4 * theirs[n].abs().max().item() + 1e-9 for n in ours)
    if checkpointing:
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
        # control: a backward outside the packed context would recompute attention across records
        model.train()
        with pytest.raises(torch.utils.checkpoint.CheckpointError):
            trainer.compute_loss(model, batch, num_items_in_batch=3.0).backward()
    model.zero_grad()
    loss = trainer.training_step(model, batch, num_items_in_batch=3.0)
    assert abs(loss.item() - ref.item()) < 1e-5 * ref.item()
    assert close(param_grads(model))


def one_step_update(model, ds, tmp_path, **kw):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    make_trainer(model, ds, tmp_path, **kw).train()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_accumulation_two_micro_batches_equal_one_batch(setup, tmp_path):
    """Two micro-batches of one record (accumulated) and one batch of two records give the same SGD step,
    and that step is -lr * grad of the fixed-normaliser objective (weights do not cancel)."""
    tok, records, _ = setup
    two = [records[0], records[3]]
    ds = WeightedSFTDataset(published(two, [0.25, 0.6]), tok, group_by_problem=False)
    init = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05).state_dict()

    def fresh():
        m = tiny_llama(vocab_size=len(tok), tie=True)
        m.load_state_dict(init)
        return m
    accumulated = one_step_update(fresh(), ds, tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    batched = one_step_update(fresh(), ds, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    model = fresh()
    oracle_loss(model, tok, two, [0.25, 0.6], 2).backward()
    expected = {n: -p.grad for n, p in model.named_parameters()}
    for name, delta in expected.items():
        scale = delta.abs().max().item() + 1e-12
        assert (accumulated[name] - batched[name]).abs().max().item() <= 1e-4 * scale, name
        assert (batched[name] - delta).abs().max().item() <= 1e-4 * scale, name


def test_single_record_keeps_its_weight(setup, tmp_path):
    """Batch size 1: the published trainer's sum w / sum w makes every record weigh 1; here it weighs q."""
    tok, records, _ = setup
    init = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05).state_dict()
    deltas = []
    for q in (1.0, 0.25):
        m = tiny_llama(vocab_size=len(tok), tie=True)
        m.load_state_dict(init)
        ds = WeightedSFTDataset(published(records[:1], [q]), tok)
        deltas.append(one_step_update(m, ds, tmp_path))
    for name, full in deltas[0].items():
        assert (deltas[1][name] - 0.25 * full).abs().max().item() <= 1e-4 * full.abs().max().item(), name


def test_constant_normalizer(setup, tmp_path):
    tok, records, weights = setup
    model = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05)
    ds = WeightedSFTDataset(published(records, weights), tok)
    trainer = make_trainer(model, ds, tmp_path, normalizer=10.0, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2)
    batches = [PackedCollator()([ds[0], ds[1]]), PackedCollator()([ds[2]])]
    assert trainer.step_normalizer(batches) == 10.0
    assert make_trainer(model, ds, tmp_path).step_normalizer(batches) == 3.0
    with torch.no_grad():
        loss = trainer.compute_loss(model, PackedCollator()([ds[i] for i in range(3)]), num_items_in_batch=10.0)
        assert abs(loss.item() - oracle_loss(model, tok, records, weights, 10).item()) < 1e-5
    with pytest.raises(ValueError, match="normalizer"):
        make_trainer(model, ds, tmp_path, normalizer=0)


def test_trl_dataset_in_published_schema(setup, tmp_path):
    """train.jsonl from write_train_set, loaded as TRL users do (datasets' json loader), gives the same
    trajectories and weights as the file itself."""
    import datasets
    tok, records, _ = setup
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    model = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05)
    table = lark_fast.score(model, tok, str(pool), progress=False, topk=0)
    weights = lark_fast.select(table, B=2)
    write_train_set(str(pool), table, weights, tmp_path / "train.jsonl")
    hf = datasets.load_dataset("json", data_files=str(tmp_path / "train.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    from_path = WeightedSFTDataset(str(tmp_path / "train.jsonl"), tok)
    from_hf = WeightedSFTDataset(hf, tok)
    assert from_hf.keys == from_path.keys and from_hf.input_ids == from_path.input_ids
    assert torch.equal(from_hf.weights, from_path.weights)
    assert sorted(from_path.weights.tolist()) == sorted(weights[weights > 0].tolist())
    assert abs(from_path.weights.sum().item() - 3.0) < 1e-9  # LARK weights sum to 1 per problem


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "meta": {"problem_id": "p", "candidate_id": "c"}}, "meta.train_weight"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "meta": {"problem_id": "p", "candidate_id": "c", "train_weight": -1}}, "meta.train_weight"),
    ({"messages": [{"role": "user", "content": "q"}],
      "meta": {"problem_id": "p", "candidate_id": "c", "train_weight": 1}}, "assistant"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "meta": {"candidate_id": "c", "train_weight": 1}}, "meta.problem_id"),
])
def test_read_train_set_names_the_bad_field(row, message):
    with pytest.raises(ValueError, match=message):
        read_train_set([row])


def test_anchor_refresh_rescores_with_the_live_model(setup, tmp_path):
    tok, records, _ = setup
    model = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05)
    scorer = LarkScorer(tok, records, B=2)
    table0, w0 = scorer(model, step=0)
    ds = WeightedSFTDataset(records, tok, weights=w0)
    callback = AnchorRefreshCallback(scorer, ds, every=2)
    trainer = make_trainer(model, ds, tmp_path, max_steps=2, learning_rate=0.5, callbacks=[callback])
    trainer.train()
    assert [h["step"] for h in scorer.history] == [0, 2]
    expected = lark_fast.select(lark_fast.score(model, tok, records, progress=False, topk=0), B=2)
    assert np.allclose(ds.weights.numpy(), expected, rtol=0, atol=1e-12)
    assert not np.allclose(expected, w0), "two SGD steps at lr 0.5 should change the selection weights"
    assert scorer.history[-1]["changed"] > 0
    with pytest.raises(ValueError, match="every"):
        AnchorRefreshCallback(scorer, ds)


def run_workers(modes, tmp_path):
    """train_dist_worker.py MODES under torchrun, 2 CPU processes; returns what rank 0 saved, {mode: result}."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    here = os.path.dirname(__file__)
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), os.path.join(here, "train_dist_worker.py"), modes, str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """DDP and FSDP2 from one torchrun (its start-up costs more than both)."""
    return run_workers("ddp,fsdp2", tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("mode", ["ddp", "zero3"])
def test_data_parallel_step_equals_single_process(setup, tmp_path, mode, request):
    """Two processes (CPU, gloo) with one record each take the single-process oracle's SGD step: DDP, and
    DeepSpeed ZeRO-3 with every parameter partitioned (the LM head's weight gathered where the loss runs)."""
    if mode == "zero3":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'lark_fast[deepspeed]')")
        delta = run_workers("zero3", tmp_path)["zero3"]
    else:
        delta = request.getfixturevalue("two_processes")["ddp"]
    tok, records, _ = setup
    model = tiny_llama(vocab_size=len(tok), tie=True, init_std=0.05)
    oracle_loss(model, tok, [records[0], records[3]], [0.25, 0.6], 2).backward()
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item()
        assert (delta[name] + p.grad).abs().max().item() <= 1e-4 * scale, name


def test_fsdp2_gradients_equal_single_process(setup, two_processes):
    """FSDP2 (fully_shard, 2 CPU processes, gloo), one record per process: the weighted loss and every
    parameter's gradient equal the single-process oracle's to 1e-5, with the LM head in the root's group
    (tied embeddings) and sharded on its own (untied)."""
    tok, records, _ = setup
    for wrap, tie in (("root", True), ("head", False)):
        model = tiny_llama(vocab_size=len(tok), tie=tie, init_std=0.05)
        ref = oracle_loss(model, tok, [records[0], records[3]], [0.25, 0.6], 2)
        ref.backward()
        result = two_processes["fsdp2"][wrap]
        assert abs(result["loss"] - ref.item()) <= 1e-5 * ref.item(), wrap
        assert result["grads"].keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            err = (result["grads"][name] - p.grad).abs().max().item()
            assert err <= 1e-5 * p.grad.abs().max().item(), (wrap, name)


def test_head_that_transforms_logits_is_refused(setup, tmp_path):
    """A model whose logits are not its output embeddings' (here doubled by a hook) would get a wrong fused
    loss: training and scoring stop, naming what would be wrong."""
    tok, records, weights = setup
    model = tiny_llama(vocab_size=len(tok))
    model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: 2 * out)
    ds = WeightedSFTDataset(published(records, weights), tok)
    with pytest.raises(RuntimeError, match="differ from the model's own.*loss would be wrong"):
        make_trainer(model, ds, tmp_path).train()
    with pytest.raises(RuntimeError, match="differ from the model's own.*scores would be wrong"):
        lark_fast.score(model, tok, records, progress=False)
