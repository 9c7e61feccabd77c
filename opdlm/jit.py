"""TorchScript where it compiles, the same Python function where it does not.

The sampler's hot paths (:func:`opdlm.models.decode_forward.decode_layers`,
:func:`opdlm.sampling.denoise_step.denoise_step`) are a few hundred small tensor ops per decoding
step; TorchScript runs them without Python's per-op call overhead (measured on the tiny student's
batch-16 decode: forwards ~15% faster). TorchScript is deprecated in torch 2.x: its warning is
silenced here, and a torch that cannot script a function gets the function itself (same results).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable


@functools.cache
def script_or_eager(fn: Callable) -> Callable:
    """``torch.jit.script(fn)``, or ``fn`` where scripting fails (cached: each function is compiled once)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(fn)
    except Exception:  # any failure to script leaves the eager function: the same results, slower
        return fn
