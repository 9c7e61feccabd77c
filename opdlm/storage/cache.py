"""Where downloaded and converted things are kept between runs: ``OPDLM_CACHE``, default ``~/.cache/opdlm``.

Resolved remote and built-in models (:mod:`opdlm.sources`), wheels fetched from PyPI and what is
read out of them (:mod:`opdlm.storage.pypi`) all live under this one folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``OPDLM_CACHE``, default ``~/.cache/opdlm``."""
    return Path(os.environ.get("OPDLM_CACHE", Path.home() / ".cache" / "opdlm"))
