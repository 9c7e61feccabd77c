"""Content fingerprints: the keys that caching and stage outputs are named by.

A key depends on what determines a stage's result (a config section, a dataset's md5, a model's
bytes), never on a path or an object identity, so moving a folder or re-creating a Python object does
not invalidate a cache, and changing one value always does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

# Files above this size are fingerprinted by size + head + tail: hashing tens of GB of weights on every
# pipeline run would cost minutes, and a changed checkpoint changes its head bytes (safetensors header).
FULL_HASH_LIMIT = 64 * 1024 * 1024
EDGE_BYTES = 8 * 1024 * 1024


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def config_hash(*parts: Any, length: int = 16) -> str:
    """sha256 (hex, first ``length`` chars) of the canonical JSON of ``parts`` (pydantic models dumped)."""
    blob = json.dumps([_jsonable(p) for p in parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(EDGE_BYTES))
            fh.seek(size - EDGE_BYTES)
            h.update(fh.read(EDGE_BYTES))
            h.update(str(size).encode())
    return h.hexdigest()


def model_dir_fingerprint(path: str | Path, length: int = 16) -> str:
    """Fingerprint of a model directory's files (relative names and bytes; hidden files skipped).

    Files up to 64 MiB are hashed whole; larger ones by size plus their first and last 8 MiB.
    """
    root = Path(path)
    entries = [
        (p.relative_to(root).as_posix(), _file_digest(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return config_hash(entries, length=length)
