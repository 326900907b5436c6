"""Sampling completions with transformers' ``generate``: left-padded batches, KV cache, a seeded
sampler, and only the flags given here (the model's own generation defaults, such as a repetition
penalty or top-k, are not applied)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int       # generated tokens, the stop token included
    finish_reason: str  # "stop" (an end-of-sequence token) or "length" (max_new_tokens reached)


def stop_token_ids(model, tokenizer) -> list:
    """End-of-sequence ids of the model's generation config and of the tokenizer."""
    ids = []
    for v in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        ids.extend(v if isinstance(v, (list, tuple)) else [] if v is None else [v])
    return sorted(set(ids))


class TransformersSampler:
    """``sampler(prompts, k, seed)``: k completions of each prompt (token id lists), sampled with
    temperature and top-p (greedy at temperature 0) in one ``generate`` call seeded with ``seed``."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, temperature: float, top_p: float, max_new_tokens: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.stop = stop_token_ids(model, tokenizer)
        if not self.stop:
            raise ValueError("the model and tokenizer name no end-of-sequence token; generation would never stop")
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop[0]
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
            dict(do_sample=False)
        self.options = dict(max_new_tokens=max_new_tokens, eos_token_id=self.stop, pad_token_id=self.pad,
                            use_cache=True, **sampling)

    def __call__(self, prompts: list, k: int, seed: int) -> list:
        from transformers import GenerationConfig
        config = GenerationConfig(num_return_sequences=k, **self.options)
        device = self.model.get_input_embeddings().weight.device
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = out[:, width:].tolist()
        return [[self._completion(new[i * k + j]) for j in range(k)] for i in range(len(prompts))]

    def _completion(self, ids: list) -> Completion:
        end = next((t for t, v in enumerate(ids) if v in self.stop), None)
        kept = ids if end is None else ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text, len(ids) if end is None else end + 1, "length" if end is None else "stop")
