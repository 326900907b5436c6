"""Generation with a tiny random student end to end: reproducible samples, resume after a kill, the vLLM
adapter (with a stand-in module), benchmark files, and the eval command line."""
import importlib.machinery
import json
import sys
import types

import pytest
from helpers import byte_tokenizer, tiny_llama

from lark_fast.cli import main
from lark_fast.eval import generate, read_benchmark
from lark_fast.eval.hf_generate import TransformersSampler
from lark_fast.eval.vllm_generate import vllm_available

PROBLEMS = [{"problem_id": f"q{i}", "problem": "What is " + "1 + " * i + "1?", "answer": str(i + 1)} for i in range(5)]
OPTIONS = dict(k=2, temperature=1.0, top_p=0.9, max_new_tokens=12, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    tok = byte_tokenizer()
    model = tiny_llama(vocab_size=len(tok))
    d = tmp_path_factory.mktemp("gen_student")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, d


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def read(path):
    return [json.loads(line) for line in open(path)]


def test_generation_is_reproducible_and_seeded(student, bench, tmp_path):
    model, tok, _ = student
    items = read_benchmark(bench)
    a = generate(model, items, tmp_path / "a.jsonl", tokenizer=tok, seed=3, **OPTIONS)
    generate(model, items, tmp_path / "b.jsonl", tokenizer=tok, seed=3, **OPTIONS)
    generate(model, items, tmp_path / "c.jsonl", tokenizer=tok, seed=4, **OPTIONS)
    rows = read(tmp_path / "a.jsonl")
    assert a["samples"] == 10 and a["batches"] == 3 and a["backend"] == "transformers"
    assert [(r["problem_id"], r["sample"]) for r in rows] == [(f"q{i}", j) for i in range(5) for j in range(2)]
    assert rows == read(tmp_path / "b.jsonl")
    assert [r["completion"] for r in rows] != [r["completion"] for r in read(tmp_path / "c.jsonl")]
    assert all(r["answers"] == [str(int(r["problem_id"][1:]) + 1)] and 1 <= r["n_tokens"] <= 12 for r in rows)
    assert all(r["finish_reason"] == "stop" or r["n_tokens"] == 12 for r in rows)
    manifest = json.loads((tmp_path / "a.manifest.json").read_text())
    assert manifest["settings"]["seed"] == 3 and manifest["summary"]["samples"] == 10
    assert not (tmp_path / "a.jsonl.parts").exists()


def test_killed_generation_resumes_with_the_same_samples(student, bench, tmp_path, monkeypatch):
    model, tok, _ = student
    items = read_benchmark(bench)
    generate(model, items, tmp_path / "whole.jsonl", tokenizer=tok, **OPTIONS)
    calls = []
    real = TransformersSampler.__call__

    def dies_on_second_batch(self, prompts, k, seed):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, prompts, k, seed)

    monkeypatch.setattr(TransformersSampler, "__call__", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(model, items, tmp_path / "killed.jsonl", tokenizer=tok, **OPTIONS)
    assert not (tmp_path / "killed.jsonl").exists() and len(list((tmp_path / "killed.jsonl.parts").glob("part-*"))) == 1
    monkeypatch.setattr(TransformersSampler, "__call__", real)
    summary = generate(model, items, tmp_path / "killed.jsonl", tokenizer=tok, **OPTIONS)
    assert summary["batches_resumed"] == 1
    assert read(tmp_path / "killed.jsonl") == read(tmp_path / "whole.jsonl")
    generate(model, items, tmp_path / "kept.jsonl", tokenizer=tok, keep_parts=True, **OPTIONS)
    part = sorted((tmp_path / "kept.jsonl.parts").glob("part-*"))[1]
    part.write_bytes(part.read_bytes()[:-20])  # a damaged part is reported and its batch sampled again
    with pytest.warns(UserWarning, match="corrupt part"):
        summary = generate(model, items, tmp_path / "kept.jsonl", tokenizer=tok, **OPTIONS)
    assert summary["batches_resumed"] == 2 and read(tmp_path / "kept.jsonl") == read(tmp_path / "whole.jsonl")
    generate(model, items, tmp_path / "kept.jsonl", tokenizer=tok, keep_parts=True, **OPTIONS)
    with pytest.raises(ValueError, match="other settings .*temperature.*--overwrite"):
        generate(model, items, tmp_path / "kept.jsonl", tokenizer=tok, **{**OPTIONS, "temperature": 0.5})


def test_vllm_adapter(student, bench, tmp_path, monkeypatch):
    """The vLLM path with a stand-in module: token-id prompts, n = k, per-prompt seeds, its outputs."""
    _, _, model_dir = student
    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            seen["llm"] = kw

        def generate(self, prompts, params, use_tqdm):
            seen.setdefault("prompts", []).extend(prompts)
            seen.setdefault("params", []).extend(p.kw for p in params)
            out = types.SimpleNamespace
            return [out(outputs=[out(text=f"\\boxed{{{j}}}", token_ids=[5] * (j + 1), finish_reason="stop")
                                 for j in range(p.kw["n"])]) for p in params]

    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    generate(str(model_dir), read_benchmark(bench), tmp_path / "v.jsonl", backend="vllm", dtype="bf16", seed=1,
             **OPTIONS)
    rows = read(tmp_path / "v.jsonl")
    assert seen["llm"]["dtype"] == "bfloat16" and seen["llm"]["seed"] == 1
    assert all(p["n"] == 2 and p["max_tokens"] == 12 and p["top_p"] == 0.9 for p in seen["params"])
    assert len({p["seed"] for p in seen["params"]}) == 5 and all("prompt_token_ids" in p for p in seen["prompts"])
    assert [r["completion"] for r in rows] == ["\\boxed{0}", "\\boxed{1}"] * 5 and rows[1]["n_tokens"] == 2


def test_backend_vllm_without_vllm_says_what_to_install(student, bench, tmp_path, monkeypatch):
    monkeypatch.setattr("lark_fast.eval.vllm_generate.vllm_available", lambda: False)
    with pytest.raises(ValueError, match="pip install 'lark_fast\\[vllm\\]'"):
        generate(str(student[2]), read_benchmark(bench), tmp_path / "v.jsonl", backend="vllm", **OPTIONS)


def test_benchmark_files_are_validated(tmp_path):
    good = tmp_path / "set.json"
    good.write_text(json.dumps([{"prompt": "2+2?", "answer": 4}, {"problem": "x?", "answer": ["1", "one"],
                                                                   "family": "none", "problem_id": "x"}]))
    items = read_benchmark(good)
    assert [(i.benchmark, i.problem_id, i.answers, i.family) for i in items] == [
        ("set", "1", ("4",), "math"), ("set", "x", ("1", "one"), "none")]
    assert items[0].messages(None)[0]["content"].endswith("\\boxed{}.") and items[1].messages(None)[0]["role"] == "user"
    assert read_benchmark(good, exclude={"x"}) == items[:1]
    bad = tmp_path / "bad.jsonl"
    for line, message in [({"problem": "p"}, "bad.jsonl:2: answer: missing"),
                          ({"answer": "1"}, "bad.jsonl:2: problem: missing"),
                          ({"problem": "p", "answer": None}, "bad.jsonl:2: answer: expected"),
                          ({"problem": "p", "answer": "1", "family": "poetry"}, "bad.jsonl:2: family: expected"),
                          ({"problem": "p", "answer": "1", "problem_id": "a"}, "bad.jsonl:2: problem_id: duplicate")]:
        bad.write_text(json.dumps({"problem": "q", "answer": "1", "problem_id": "a"}) + "\n" + json.dumps(line) + "\n")
        with pytest.raises(ValueError, match=message):
            read_benchmark(bad)
    with pytest.raises(ValueError, match="unknown benchmark format"):
        read_benchmark(tmp_path / "set.csv")


def test_eval_commands_end_to_end(student, bench, tmp_path, capsys):
    _, _, model_dir = student
    samples, graded = tmp_path / "samples.jsonl", tmp_path / "graded.jsonl"
    assert main(["eval", "generate", "--model", str(model_dir), "--benchmark", str(bench), "--output", str(samples),
                 "--k", "2", "--max-new-tokens", "8", "--label", "tiny", "--quiet"]) == 0
    assert ("vLLM is not installed" in capsys.readouterr().out) == (not vllm_available())
    assert main(["eval", "grade", "--samples", str(samples), "--output", str(graded), "--grader", "exact",
                 "--quiet"]) == 0
    assert main(["eval", "report", str(graded), "--output", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "| toy | tiny | 5 | 2 |" in out and "pass@2" in out
    assert (tmp_path / "report" / "report.csv").read_text().startswith("benchmark,label,problems")
    assert main(["eval", "generate", "--model", str(model_dir), "--benchmark", str(tmp_path / "missing.jsonl"),
                 "--output", str(samples)]) == 2
