"""Helpers shared by the tests: tiny models and tokenizers built offline, pool records, oracles written
independently of the code under test, an allocation probe, the command line in a fresh process. Fixtures
live in conftest.py."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import TrainingArguments

from lark_fast.chat import ChatTokenizer
from lark_fast.train import WeightedSFTTrainer

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


def byte_tokenizer(chat_template=CHATML):
    """A 258-token byte-level tokenizer (every byte one token) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                  pad_token="<|im_end|>")
    tok.chat_template = chat_template
    return tok


def bos_tokenizer():
    """``byte_tokenizer`` whose tokenizer call adds a BOS token ``<s>`` (a TemplateProcessing post-processor,
    as on Llama-style tokenizers) and whose chat template starts with that BOS too: rendering the template
    to text and tokenising it with special tokens gives two BOS tokens, ``apply_chat_template(tokenize=True)``
    one."""
    from tokenizers import processors

    tok = byte_tokenizer("{{ bos_token }}" + CHATML)
    tok.add_special_tokens({"bos_token": "<s>"})
    bos = tok.convert_tokens_to_ids("<s>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


def published_scorer(model, tokenizer, records, *, max_length, top_k=50, student_model="student"):
    """The published LARK scorer (score_lark.py, the code of arXiv 2605.30651), re-written from its algorithm
    for tests: the chat template rendered to text (the prompt without any assistant turn, with the generation
    prompt), each text tokenised by ``tokenizer(text, truncation=True, max_length=max_length)`` (special
    tokens added), a record skipped when fewer than 2 tokens follow the prompt; one forward per record, fp32
    logits, L = mean cross-entropy and Brier = mean ||e_y - softmax(top-K logits)||^2 over the tokens after
    the prompt; per problem rho = Brier / L (0 when L <= 1e-30) and
    g_hat = (L / sum L) (2 rho - sum rho L / sum L). Returns the file it writes, as a dict."""
    by_problem, n_scored, n_skipped = {}, 0, 0
    for rec in records:
        msgs = rec["messages"]
        full_text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        prompt_text = tokenizer.apply_chat_template([m for m in msgs if m["role"] != "assistant"], tokenize=False,
                                                    add_generation_prompt=True)
        full = tokenizer(full_text, truncation=True, max_length=max_length).input_ids
        prompt = tokenizer(prompt_text, truncation=True, max_length=max_length).input_ids
        if len(prompt) >= len(full) - 1:
            n_skipped += 1
            continue
        ids = torch.tensor([full])
        with torch.no_grad():
            z = model(input_ids=ids).logits[0, :-1].float()[len(prompt) - 1:len(full) - 1]
        y = ids[0, len(prompt):]
        L = torch.nn.functional.cross_entropy(z, y).item()
        vals, idx = z.topk(min(top_k, z.shape[-1]), dim=-1)
        p = torch.softmax(vals, dim=-1)
        brier = (1 - 2 * (p * (idx == y[:, None])).sum(-1) + (p * p).sum(-1)).mean().item()
        by_problem.setdefault(rec["problem_id"], []).append(
            {"candidate_id": rec["candidate_id"], "teacher": rec["teacher"], "L": L, "Brier": brier})
        n_scored += 1
    for cands in by_problem.values():
        rhos = [c["Brier"] / c["L"] if c["L"] > 1e-30 else 0.0 for c in cands]
        sum_L = sum(c["L"] for c in cands)
        sum_rho_L = sum(r * c["L"] for r, c in zip(rhos, cands))
        for c, rho in zip(cands, rhos):
            c["rho"] = rho
            c["g_hat"] = c["L"] / sum_L * (2 * rho - sum_rho_L / sum_L) if sum_L > 1e-30 else float("nan")
    return {"method": "lark_ghat", "student_model": student_model, "top_k": top_k, "n_problems": len(by_problem),
            "n_scored": n_scored, "n_skipped": n_skipped,
            "scores": {str(pid): cands for pid, cands in sorted(by_problem.items())}}


def tiny_llama(vocab_size=1003, hidden_size=72, layers=2, tie=False, seed=0, init_std=0.2, **extra):
    """A random Llama-architecture student; a large init_std makes its predictions peaked."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=tie, initializer_range=init_std, **extra)
    return LlamaForCausalLM(cfg).eval()


def make_records(n_problems=4, per_problem=3, seed=0):
    """Pool records with varied lengths (some long, some a few tokens)."""
    rng = random.Random(seed)
    words = ["the", "sum", "of", "x", "and", "y", "is", "so", "we", "get", "2", "7", "=", "+", "therefore"]
    out = []
    for p in range(n_problems):
        for c in range(per_problem):
            n = rng.choice([1, 3, 12, 40, 90])
            answer = " ".join(rng.choice(words) for _ in range(n))
            msgs = [{"role": "user", "content": f"Problem {p}: what is {p} + {c}?"},
                    {"role": "assistant", "content": answer}]
            if (p + c) % 2:
                msgs.insert(0, {"role": "system", "content": "You are a careful mathematician."})
            out.append({"problem_id": f"prob-{p}", "candidate_id": f"cand-{c}", "teacher": f"T{c % 2}",
                        "messages": msgs})
    return out


def write_pool(path, records):
    """A JSONL pool file of ``records``; returns its path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(args, *, prelude: str = "", wait: bool = True, timeout: float = 600):
    """``lark-fast ARGS`` in a fresh interpreter with one thread. ``prelude`` (Python) runs before the command,
    e.g. to simulate a fault. Returns the finished CompletedProcess (text output), or with ``wait=False``
    the running Popen (output piped)."""
    code = f"{prelude}\nimport sys\nfrom lark_fast.cli import main\nsys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def oracle_table(model, tokenizer, records, max_length=None):
    """Per-trajectory scores from model(...).logits in float64 (docs/method.md §2-3, written independently)."""
    ct = ChatTokenizer(tokenizer, max_length=max_length or model.config.max_position_embeddings)
    rows = []
    for r in records:
        t = ct(r["messages"])
        ids = torch.tensor([t.input_ids])
        with torch.no_grad():
            z = model(input_ids=ids).logits[0].double()[t.start - 1: len(t.input_ids) - 1]
        y = ids[0, t.start:]
        lse = torch.logsumexp(z, 1)
        zy = z[torch.arange(len(y)), y]
        p = torch.softmax(z, 1)
        onehot = torch.nn.functional.one_hot(y, z.shape[1]).double()
        nll = lse - zy
        brier = ((p - onehot) ** 2).sum(1)
        entropy = -(p * torch.log(p)).sum(1)
        rank = 1 + (z > zy[:, None]).sum(1)
        vals = z.topk(50, 1).values
        pk = torch.softmax(vals, 1)
        py = torch.exp(zy - torch.logsumexp(vals, 1)) * (rank <= 50)
        top = 1 - 2 * py + (pk ** 2).sum(1)
        top_entropy = -(pk * torch.log_softmax(vals, 1)).sum(1)
        rows.append({"L": nll.mean().item(), "brier": brier.mean().item(), "entropy": entropy.mean().item(),
                     "rsr": rank.clamp(max=100).sum().item() / nll.sum().item(), "brier_top50": top.mean().item(),
                     "topk_entropy": top_entropy.mean().item(), "n_tokens": len(y), "truncated": t.truncated})
    out = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    out["rho"] = out["brier"] / out["L"]
    pids = np.array([r["problem_id"] for r in records])
    out["g_hat"] = np.zeros(len(rows))
    for p in set(pids):
        m = pids == p
        L, B = out["L"][m], out["brier"][m]
        out["g_hat"][m] = L / L.sum() * (2 * B / L - B.sum() / L.sum())
    return out


def assert_same_table(a, b):
    """Same rows in the same order, every score within 1e-6."""
    assert a.column_names == b.column_names
    for k in a.column_names:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
        else:
            assert list(a[k]) == list(b[k]), k


def assert_matches(table, ref, rtol=1e-5):
    assert np.array_equal(table["n_tokens"], ref["n_tokens"])
    assert np.array_equal(table["truncated"], ref["truncated"])
    for k in ("L", "brier", "rho", "g_hat", "entropy", "rsr", "brier_top50", "topk_entropy"):
        np.testing.assert_allclose(table[k], ref[k], rtol=rtol, atol=1e-7, err_msg=k)
    np.testing.assert_array_equal(table["global_naturalness"], -table["L"])


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor storage any op creates (views are not allocations)."""

    def __init__(self):
        super().__init__()
        self.max_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.untyped_storage().nbytes())
        return out


def published(records, weights):
    return [{"messages": r["messages"], "meta": {"problem_id": r["problem_id"], "candidate_id": r["candidate_id"],
                                                 "teacher": r["teacher"], "score": 0.0, "train_weight": w}}
            for r, w in zip(records, weights)]


def make_trainer(model, dataset, tmp_path, **kw):
    args = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, gradient_accumulation_steps=1,
                max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0)
    args.update({k: kw.pop(k) for k in list(kw) if k in TrainingArguments.__dataclass_fields__})
    return WeightedSFTTrainer(model=model, args=TrainingArguments(**args), train_dataset=dataset, **kw)
