"""Sampling completions with vLLM (optional extra ``vllm``), the same interface as
``hf_generate.TransformersSampler``: per prompt, vLLM's own seed derived from the batch's."""
from __future__ import annotations

import importlib.util

from .hf_generate import Completion

INSTALL_VLLM = "pip install 'lark_fast[vllm]' (or vllm)"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMSampler:
    name = "vllm"

    def __init__(self, model_dir, *, dtype: str, temperature: float, top_p: float, max_new_tokens: int, seed: int):
        if not vllm_available():
            raise ValueError(f"backend vllm: vLLM is not installed; {INSTALL_VLLM}")
        from vllm import LLM
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed)
        self.sampling = dict(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)

    def __call__(self, prompts: list, k: int, seed: int) -> list:
        from vllm import SamplingParams
        params = [SamplingParams(n=k, seed=seed + i, **self.sampling) for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [[Completion(o.text, len(o.token_ids), "stop" if o.finish_reason == "stop" else "length")
                 for o in out.outputs] for out in outs]
