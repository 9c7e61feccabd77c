"""Where resolved remote and built-in models are kept between runs (the one cache root is
:func:`opdlm.storage.cache.cache_dir`, shared with the wheels fetched from PyPI)."""

from __future__ import annotations

from opdlm.storage.cache import cache_dir

__all__ = ["cache_dir"]
