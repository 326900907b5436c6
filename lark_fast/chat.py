"""Token ids and the scored assistant span, from the tokenizer's own chat template (docs/method.md §3).

full   = apply_chat_template(messages, tokenize=True)
prompt = apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True)
The template decides every special token; none are added on top. When ``prompt`` is a prefix of
``full`` the scored span is [len(prompt), len(full)) and token t is predicted from position t - 1.
Otherwise, or when nothing is left to score, the record gets a status other than ``ok`` and a reason.

``PublishedChatTokenizer`` tokenises as the published LARK scorer did (``compat="published"``,
docs/method.md §3.7): the template rendered to text, then the tokenizer's own call with its special
tokens, truncated by the tokenizer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

# Status of a record that was read but cannot be (or was not) scored.
OK = "ok"
EMPTY_ASSISTANT = "empty_assistant"      # assistant content blank, or the template yields no span
TEMPLATE_ERROR = "template_error"        # the chat template raised
TEMPLATE_MISMATCH = "template_mismatch"  # prompt ids are not a prefix of the full ids
PROMPT_TOO_LONG = "prompt_too_long"      # the prompt alone reaches max_length
NONFINITE = "nonfinite"                  # the student produced NaN/inf statistics
OUT_OF_MEMORY = "out_of_memory"          # does not fit in memory even alone in its batch


@dataclass
class Tokenized:
    input_ids: list  # full conversation ids, cut at max_length when truncated
    start: int       # first scored token; scored tokens are input_ids[start:]
    n_full: int      # length before truncation
    truncated: bool
    status: str = OK
    reason: str = ""

    @property
    def n_scored(self) -> int:
        return len(self.input_ids) - self.start if self.status == OK else 0


class ChatTokenizer:
    """Applies the chat template and locates the assistant span; ``max_length`` truncates (flagged)."""

    def __init__(self, tokenizer, max_length: Optional[int] = None, chat_template: Optional[str] = None):
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template; pass one "
                             "(chat_template=... / --chat-template FILE)")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length: must be >= 2, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat_template = chat_template

    def _ids(self, messages, add_generation_prompt: bool) -> list:
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                                 chat_template=self.chat_template, return_dict=False)
        if isinstance(out, Mapping):  # some versions return a BatchEncoding whatever return_dict says
            out = out["input_ids"]
        if hasattr(out, "tolist"):
            out = out.tolist()
        if out and isinstance(out[0], list):
            out = out[0]
        return [int(t) for t in out]

    def __call__(self, messages: list) -> Tokenized:
        if not messages[-1]["content"].strip():
            return Tokenized([], 0, 0, False, EMPTY_ASSISTANT, "assistant content is empty")
        try:
            full = self._ids(messages, add_generation_prompt=False)
            prompt = self._ids(messages[:-1], add_generation_prompt=True)
        except Exception as e:  # jinja errors (e.g. "roles must alternate") and template bugs
            return Tokenized([], 0, 0, False, TEMPLATE_ERROR, f"{type(e).__name__}: {e}")
        n_full, start = len(full), len(prompt)
        if full[:start] != prompt:
            diff = next((i for i, (a, b) in enumerate(zip(full, prompt)) if a != b), min(n_full, start))
            return Tokenized(full, 0, n_full, False, TEMPLATE_MISMATCH,
                             f"prompt ids ({start} tokens) are not a prefix of the conversation ids "
                             f"({n_full} tokens); first difference at token {diff}")
        start = max(start, 1)  # token 0 has no predecessor
        if n_full <= start:
            return Tokenized(full, start, n_full, False, EMPTY_ASSISTANT, "the chat template yields no assistant tokens")
        truncated = self.max_length is not None and n_full > self.max_length
        if truncated:
            full = full[: self.max_length]
            if start >= self.max_length:
                return Tokenized(full, start, n_full, True, PROMPT_TOO_LONG,
                                 f"prompt has {start} tokens, max_length is {self.max_length}: no assistant token fits")
        return Tokenized(full, start, n_full, truncated)


class PublishedChatTokenizer(ChatTokenizer):
    """The published scorer's tokenisation, to reproduce its numbers (docs/method.md §3.7):

        full   = tokenizer(apply_chat_template(messages, tokenize=False), truncation=True, max_length=M)
        prompt = tokenizer(apply_chat_template(non-assistant messages, tokenize=False,
                                               add_generation_prompt=True), truncation=True, max_length=M)

    The tokenizer call adds its special tokens on top of the template's (a second BOS on Llama-style
    tokenizers). The scored span is [len(prompt), len(full)) whether or not ``prompt`` is a prefix of
    ``full``; a record with fewer than two tokens after the prompt is not scored (the published scorer
    skips it). Truncation is the tokenizer's (on the right by default), flagged."""

    def _encode(self, text: str) -> tuple:
        """(ids, length before truncation) of ``tokenizer(text)`` with special tokens, cut at max_length."""
        ids = self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        n = len(ids)
        if self.max_length is not None and n > self.max_length:
            ids = self.tokenizer(text, add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]
        return [int(t) for t in ids], n

    def _text(self, messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  chat_template=self.chat_template)

    def __call__(self, messages: list) -> Tokenized:
        try:
            full_text = self._text(messages, add_generation_prompt=False)
            prompt_text = self._text([m for m in messages if m["role"] != "assistant"], add_generation_prompt=True)
        except Exception as e:  # jinja errors and template bugs (the published scorer would stop here)
            return Tokenized([], 0, 0, False, TEMPLATE_ERROR, f"{type(e).__name__}: {e}")
        full, n_full = self._encode(full_text)
        prompt, _ = self._encode(prompt_text)
        truncated = n_full > len(full)
        start = max(len(prompt), 1)  # token 0 has no predecessor
        if len(prompt) >= len(full) - 1:
            if truncated:
                return Tokenized(full, start, n_full, True, PROMPT_TOO_LONG,
                                 f"prompt has {len(prompt)} tokens, max_length is {self.max_length}: fewer than 2 "
                                 "assistant tokens fit (the published scorer skips such records)")
            return Tokenized(full, start, n_full, False, EMPTY_ASSISTANT,
                             f"{max(0, len(full) - len(prompt))} tokens follow the prompt (the published scorer "
                             "skips records with fewer than 2)")
        return Tokenized(full, start, n_full, truncated)
