"""Content fingerprints: sha256 of files (pool, model, outputs: manifests and checkpoint parts) and the
hash of a record's messages that the score table keeps, so that ``select`` can tell a pool that was
not the one scored."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Union


def file_sha256(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(messages: list) -> str:
    """16 hex digits of the sha256 of a record's messages (role and content of every turn)."""
    text = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
