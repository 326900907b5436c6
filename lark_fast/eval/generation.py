"""``lark-fast eval generate``: k sampled completions per benchmark problem, checkpointed so that a
killed run resumes.

Prompts are the student's chat template applied to the problem's family system prompt and the problem
(``benchmark.BenchmarkItem.messages``). They are sorted by length (longest first: a batch that does not
fit in memory fails at once) and cut into batches of about ``batch_size`` sequences (a prompt's k
samples stay in one batch). Batch b is sampled with a seed derived from (``seed``, b) and flushed as
one part of ``<output>.parts/`` (``RowCheckpoint``); a rerun with the same settings skips the finished
batches, so an interrupted run ends with exactly the samples of an uninterrupted one.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..chat import ChatTokenizer
from ..report import manifest_path, versions
from ..row_checkpoint import RowCheckpoint, content_digest
from ..table import write_json, write_jsonl
from .hf_generate import TransformersSampler
from .vllm_generate import INSTALL_VLLM, VLLMSampler, vllm_available

BACKENDS = ("auto", "transformers", "vllm")


def batch_seed(seed: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def choose_backend(name: str, device: str) -> str:
    """``auto``: vLLM when it is installed and a GPU is there, else transformers (saying what to install)."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    if name != "auto":
        return name
    if vllm_available() and str(device).startswith("cuda"):
        return "vllm"
    if not vllm_available():
        print(f"lark-fast eval generate: vLLM is not installed ({INSTALL_VLLM}); generating with transformers")
    return "transformers"


def prompt_ids(tokenizer, items: list, system_prompt: Optional[str], chat_template: Optional[str]) -> list:
    chat = ChatTokenizer(tokenizer, chat_template=chat_template)
    out = []
    for item in items:
        try:
            out.append(chat._ids(item.messages(system_prompt), add_generation_prompt=True))
        except Exception as e:  # jinja errors, e.g. a template without a system role
            raise ValueError(f"{item.benchmark} {item.problem_id}: the chat template failed ({type(e).__name__}: "
                             f"{e}); if it takes no system turn, pass --system-prompt ''") from None
    return out


def vllm_dtype(dtype: str) -> str:
    """vLLM's name of a --dtype (auto, float32, bfloat16, float16 or an alias such as bf16)."""
    from ..models import DTYPES
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return str(DTYPES[dtype]).split(".")[-1]


def plan_batches(lengths: list, k: int, batch_size: int) -> list:
    """Item indices per batch: longest prompts first, max(1, batch_size // k) prompts per batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    per = max(1, batch_size // k)
    return [order[j:j + per] for j in range(0, len(order), per)]


def generate(model, items: list, output, *, tokenizer=None, label: str = "student", k: int = 5,
             temperature: float = 0.6, top_p: float = 0.95, max_new_tokens: int = 2048, batch_size: int = 32,
             seed: int = 0, system_prompt: Optional[str] = None, chat_template: Optional[str] = None,
             backend: str = "auto", device: str = "auto", dtype: str = "auto", overwrite: bool = False,
             keep_parts: bool = False, progress: bool = True) -> dict:
    """Samples ``k`` completions of every benchmark item (``benchmark.read_benchmark``) and writes them to
    ``output`` (JSONL, one row per sample: benchmark, problem_id, sample, label, answers, completion,
    n_tokens, finish_reason) with a manifest beside it. ``model``: a model spec (``models.load_student``)
    or a loaded transformers model with its ``tokenizer`` (then the transformers backend). Returns a
    summary (samples, resumed batches, seconds, backend)."""
    from ..models import load_student, load_tokenizer, local_directory, resolve_device

    if k < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("k, batch_size and max_new_tokens must be >= 1")
    if not 0 < top_p <= 1 or temperature < 0:
        raise ValueError(f"top_p must be in (0, 1] and temperature >= 0, got top_p={top_p}, temperature={temperature}")
    if temperature == 0 and k > 1:
        raise ValueError("temperature 0 (greedy) gives k identical samples; use k=1 or a temperature > 0")
    loaded = not isinstance(model, (str, Path))
    model_name = type(model).__name__ if loaded else str(model)
    if loaded and tokenizer is None:
        raise ValueError("tokenizer: required with a loaded model")
    device = str(model.device) if loaded else resolve_device(device)
    backend = "transformers" if loaded else choose_backend(backend, device)
    if not loaded:
        tokenizer = load_tokenizer(model)
    prompts = prompt_ids(tokenizer, items, system_prompt, chat_template)
    batches = plan_batches([len(p) for p in prompts], k, batch_size)
    settings = {"k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "batch_size": batch_size, "seed": seed, "label": label, "backend": backend,
                "system_prompt": system_prompt,
                "chat_template": content_digest(chat_template) if chat_template else None}
    described = [[i.benchmark, i.problem_id, i.problem, list(i.answers), i.family] for i in items]
    fingerprint = {"items": content_digest(described), "prompts": content_digest(prompts), "model": model_name,
                   **settings}
    run_dir = Path(str(output) + ".parts")
    store = RowCheckpoint(run_dir, fingerprint, overwrite=overwrite)
    rows = store.load()
    done = {r["batch"] for r in rows}
    todo = [b for b in range(len(batches)) if b not in done]
    t0 = time.perf_counter()
    if todo:
        sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        if backend == "vllm":
            sampler = VLLMSampler(local_directory(model), dtype=vllm_dtype(dtype), seed=seed, **sampling)
        else:
            if not loaded:
                model, _ = load_student(model, device, dtype)
            sampler = TransformersSampler(model, tokenizer, **sampling)
        from tqdm.auto import tqdm
        bar = tqdm(total=len(items) * k, initial=len(rows), unit="sample", desc=f"generate {label}",
                   disable=not progress)
        for b in todo:
            chunk = sampler([prompts[i] for i in batches[b]], k, batch_seed(seed, b))
            part = [{"benchmark": items[i].benchmark, "problem_id": items[i].problem_id, "sample": j, "label": label,
                     "answers": list(items[i].answers), "completion": c.text, "n_tokens": c.n_tokens,
                     "finish_reason": c.finish_reason, "batch": b}
                    for i, completions in zip(batches[b], chunk) for j, c in enumerate(completions)]
            store.write_part(part)
            rows.extend(part)
            bar.update(len(part))
        bar.close()
    position = {(it.benchmark, it.problem_id): n for n, it in enumerate(items)}
    rows.sort(key=lambda r: (position[(r["benchmark"], r["problem_id"])], r["sample"]))
    write_jsonl(output, ({key: v for key, v in r.items() if key != "batch"} for r in rows))
    summary = {"samples": len(rows), "batches": len(batches), "batches_resumed": len(batches) - len(todo),
               "seconds": round(time.perf_counter() - t0, 1), "backend": backend,
               "generated_tokens": int(sum(r["n_tokens"] for r in rows)),
               "cut_at_max_new_tokens": int(sum(r["finish_reason"] == "length" for r in rows))}
    write_json(manifest_path(output), {"command": "eval generate", "output": str(output), "model": model_name,
                                       "settings": settings, "problems": len(items), "summary": summary,
                                       "corrupt_parts_redone": store.problems, "versions": versions()})
    if not keep_parts:
        shutil.rmtree(run_dir, ignore_errors=True)
    return summary
