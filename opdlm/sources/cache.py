"""Where resolved remote and built-in models are kept between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``OPDLM_CACHE``, default ``~/.cache/opdlm``."""
    return Path(os.environ.get("OPDLM_CACHE", Path.home() / ".cache" / "opdlm"))
