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

from opdlm.fsutil import dir_fingerprint


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def config_hash(*parts: Any, length: int = 16) -> str:
    """sha256 (hex, first ``length`` chars) of the canonical JSON of ``parts`` (pydantic models dumped)."""
    blob = json.dumps([_jsonable(p) for p in parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def model_dir_fingerprint(path: str | Path, length: int = 16) -> str:
    """Fingerprint of a model directory's files (:func:`opdlm.fsutil.dir_fingerprint`, its one home)."""
    return dir_fingerprint(path, length)
