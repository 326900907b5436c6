"""Selection proxies ("methods"): what each one computes, which direction is better, what it costs, and
how its column is computed. This registry is the one place a proxy is defined: the scoring run asks
each requested method for its extra forwards, and builds each method's column with its ``compute``.

Single-pass methods (``cost=FUSED``) come out of the one fused LM-head pass that computes LARK's
statistics (plus the top-K logits for ``topk_entropy``); ``length`` and ``random`` need no model;
``ifd`` and ``local_naturalness`` need forwards of their own (``forwards``: their nll and token
counts arrive summed per record as ``<name>_nll`` and ``<name>_n``); ``lark_grad`` and ``rho_grad``
need the gradient sketches (one activation-gradient backward, ``score(..., sketch_dim=k)``). Every
method is a column of the score table; ``select(..., by=name)`` ranks by it in its own direction
(lower-is-better scores are negated), so picking "the top B" never picks the worst RSR trajectories.
See docs/method.md §9.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .chat import OK, Tokenized
from .scores import lark_energy

FUSED, FREE, EXTRA, SKETCH = "fused pass", "no model", "extra forwards", "gradient sketch"


@dataclass
class RunSums:
    """What a method's ``compute`` reads: the per-record sums of a scoring run (``lark_fast.columns``),
    the per-trajectory means of ``scores.trajectory_scores`` (L, brier, rho, rho_brier, entropy, rsr), which
    rows are scored (``ok``), the run's top-K and random seed."""

    sums: dict
    means: dict
    ok: np.ndarray
    topk: int = 0
    random_seed: int = 0

    def mean(self, total: str, count: str) -> np.ndarray:
        """sums[total] / sums[count] on scored rows with count > 0, NaN elsewhere."""
        n = self.sums[count]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.ok & (n > 0), self.sums[total] / n, np.nan)


@dataclass(frozen=True)
class Method:
    name: str
    column: str
    direction: int  # +1: higher is better, -1: lower is better
    cost: str
    passes: str  # model passes per trajectory
    definition: str
    # the column from a run's sums (None: the column is made elsewhere, e.g. n_tokens or the sketch columns)
    compute: Optional[Callable[[RunSums], Optional[np.ndarray]]] = None
    # EXTRA methods: (chat tokenizer, messages, the record's Tokenized) -> the Tokenized forwards to score
    forwards: Optional[Callable] = None


STEP_CONTEXT = 4


def random_scores(problem_ids, candidate_ids, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) per (problem_id, candidate_id), independent of row order and batch composition."""
    def u(p, c):
        h = hashlib.blake2b(f"{seed}\x1f{p}\x1f{c}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2.0 ** 64
    return np.array([u(p, c) for p, c in zip(problem_ids, candidate_ids)], dtype=np.float64)


def steps(text: str) -> list:
    """(start, end) character spans of the reasoning steps: the text split on blank lines, each step
    without its surrounding whitespace."""
    spans, pos = [], 0
    for m in list(re.finditer(r"\n[ \t]*\n\s*", text)) + [None]:
        end = len(text) if m is None else m.start()
        chunk = text[pos:end]
        if chunk.strip():
            a = pos + len(chunk) - len(chunk.lstrip())
            spans.append((a, a + len(chunk.strip())))
        if m is not None:
            pos = m.end()
    return spans


def answer_only(chat, messages, full: Tokenized) -> Tokenized:
    """The assistant tokens of ``full`` after only the generation prompt (the assistant header).

    The header is what ``add_generation_prompt=True`` adds to the prompt; a template whose prompt
    without it is not a prefix of the prompt with it has no separable header (status not ok).
    """
    with_header = chat._ids(messages[:-1], add_generation_prompt=True)
    without = chat._ids(messages[:-1], add_generation_prompt=False)
    if with_header[:len(without)] != without or len(with_header) == len(without):
        return Tokenized([], 0, 0, False, "no_header", "the chat template has no separable assistant header")
    header = with_header[len(without):]
    return Tokenized(header + full.input_ids[full.start:], len(header), full.n_full, full.truncated)


def step_windows(chat, messages, full: Tokenized) -> list:
    """One Tokenized per reasoning step: the prompt, at most STEP_CONTEXT previous steps, then the step,
    scored on the step's own tokens (those whose characters lie in it)."""
    tok = chat.tokenizer
    answer = messages[-1]["content"]
    spans = steps(answer)
    out = []
    for j, (a, b) in enumerate(spans):
        first = spans[max(0, j - STEP_CONTEXT)][0]
        content = answer[first:b]
        msgs = messages[:-1] + [{"role": "assistant", "content": content}]
        text = tok.apply_chat_template(msgs, tokenize=False, chat_template=chat.chat_template)
        at = text.rfind(content)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        lo, hi = at + (a - first), at + (b - first)
        inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and lo <= s < hi]
        if at < 0 or not inside or inside[0] == 0:
            continue
        ids = enc["input_ids"][: inside[-1] + 1]
        if chat.max_length is not None and len(ids) > chat.max_length:
            continue
        out.append(Tokenized(ids, inside[0], len(ids), False))
    return out


def is_ok(t: Tokenized) -> bool:
    return t.status == OK and t.n_scored > 0


def _ifd(r: RunSums) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return r.means["L"] / r.mean("ifd_nll", "ifd_n")


def _topk_entropy(r: RunSums) -> Optional[np.ndarray]:
    return r.mean("entropy_topk", "n_tokens") if r.topk else None


METHODS = {m.name: m for m in [
    Method("rho", "rho", +1, FUSED, "1", "learnability: mean exact Brier / mean nll (top-K Brier with --compat "
           "published)", lambda r: r.means["rho"]),
    Method("lark", "g_hat", +1, FUSED, "1", "LARK score: d rho(q)/d q_k at the uniform mixture, per problem "
           "(docs/method.md §3.5)", lambda r: lark_energy(r.sums["problem_id"], r.means["L"], r.means["rho_brier"], r.ok)),
    Method("entropy", "entropy", -1, FUSED, "1", "mean predictive entropy of the student over the trajectory",
           lambda r: r.means["entropy"]),
    Method("rsr", "rsr", -1, FUSED, "1", "rank-surprisal ratio: sum min(rank, 100) / sum nll (arXiv 2601.14249)",
           lambda r: r.means["rsr"]),
    Method("global_naturalness", "global_naturalness", +1, FUSED, "1", "-L, minus the mean nll of the trajectory",
           lambda r: -r.means["L"]),
    Method("brier", "brier", +1, FUSED, "1", "mean exact Brier ||p - e_y||^2, the squared logit-gradient norm: "
           "how much signal a step on the trajectory gets", lambda r: r.means["brier"]),
    Method("topk_entropy", "topk_entropy", -1, FUSED, "1",
           "mean entropy of the student's softmax renormalised over its K largest logits (--topk, default 50)",
           _topk_entropy),
    Method("length", "n_tokens", +1, FREE, "0", "number of scored (assistant) tokens"),
    Method("random", "random", +1, FREE, "0", "seeded uniform random number per (problem_id, candidate_id)",
           lambda r: random_scores(r.sums["problem_id"], r.sums["candidate_id"], r.random_seed)),
    Method("ifd", "ifd", +1, EXTRA, "1 more",
           "instruction-following difficulty: mean nll of the answer given the prompt / given only the assistant "
           "header (the chat template's generation prompt)", _ifd,
           lambda chat, messages, tok: [answer_only(chat, messages, tok)]),
    Method("local_naturalness", "local_naturalness", +1, EXTRA, "about 1 + 4 per step",
           "minus the mean nll of the answer's tokens when each step (split on blank lines) sees only the prompt "
           "and its 4 previous steps", lambda r: -r.mean("local_naturalness_nll", "local_naturalness_n"),
           step_windows),
    Method("lark_grad", "g_hat_grad", +1, SKETCH, "1 + backward",
           "gradient-aware LARK score: d rho_G(q)/d q_k at the uniform mixture, from the Gram matrix of the "
           "candidates' gradient sketches instead of orthogonal gradients (docs/method.md §4.5)"),
    Method("rho_grad", "rho_grad", +1, SKETCH, "1 + backward",
           "parameter-level learnability: sketched ||grad_theta L||^2 / L (the loss's decay rate under gradient flow)"),
]}
# per-record sums of the extra forwards: <name>_nll and <name>_n
EXTRA_SUMS = tuple(f"{m.name}_{s}" for m in METHODS.values() if m.forwards is not None for s in ("nll", "n"))


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def ranking_score(table, name: str) -> np.ndarray:
    """The method's column oriented so that higher is better (NaN where missing)."""
    m = method(name)
    if m.column not in table:
        raise ValueError(f"the score table has no {m.column!r} column; score with --methods {name}")
    return m.direction * np.asarray(table[m.column], dtype=np.float64)
