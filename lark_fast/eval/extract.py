"""The final answer of a completion: the content of its last ``\\boxed{...}`` (docs/method.md §10.1)."""
from __future__ import annotations

import re
from typing import Optional

# \boxed{...}, \fbox{...} and the brace-less "\boxed 5"; not \boxedfoo
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")


def _braced(text: str, i: int) -> Optional[str]:
    """The content of the brace group opening at text[i] ("{"), nested braces included and
    backslash-escaped braces (``\\{``, ``\\}``) not counted; None when it never closes."""
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
        j += 1
    return None


def boxed_answers(text: str) -> list:
    """Every boxed answer of ``text`` in order: the content of ``\\boxed{...}`` / ``\\fbox{...}``
    (outer braces removed, inner ones kept) or the token after a brace-less ``\\boxed 5``. A box whose
    braces never close (a completion cut at max_new_tokens) gives nothing."""
    out = []
    for m in _BOX.finditer(text):
        start = m.end()
        if start < len(text) and text[start] == "{":
            content = _braced(text, start)
        elif m.group(0) != m.group(0).rstrip():  # "\boxed 5": up to whitespace, "$" or the end
            content = re.match(r"[^\s$]*", text[start:]).group(0) or None
        else:
            content = None
        if content is not None:
            out.append(content.strip())
    return out


def last_boxed(text: str) -> Optional[str]:
    """The last boxed answer of ``text`` (the final one when a completion boxes several), or None."""
    found = boxed_answers(text)
    return found[-1] if found else None
