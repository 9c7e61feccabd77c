"""Training rows and the deterministic order in which rollout batches draw them.

The prompt stream is an endless sequence of epochs, each a seeded permutation of the rows, so the
prompts of rollout step ``s`` depend only on ``(seed, s)``: the data cursor is
``s * prompts_per_rollout`` and a resumed run draws exactly the prompts it would have drawn.
"""

from __future__ import annotations

from pathlib import Path

import torch

from opdlm.data.schema import Row, read_rows
from opdlm.errors import OpdlmError


def load_training_rows(source: str, path: str | None, num_prompts: int | None, seed: int) -> list[Row]:
    """Rows from ``path`` (JSONL) when given, else from ``source`` (a ``builtin:`` name or a JSONL path)."""
    if path:
        return read_rows(path)
    if source.startswith("builtin:"):
        from opdlm.data.builtin import builtin_rows

        return builtin_rows(source, num_prompts, seed)
    if Path(source).is_file():
        return read_rows(source)
    raise OpdlmError(f"data source {source!r}: not a builtin: source and not a JSONL file (pass --data FILE)")


def stream_indices(num_rows: int, start: int, count: int, seed: int) -> list[int]:
    """Row indices ``start .. start + count`` of the epoch-permuted stream."""
    out, cache = [], {}
    for idx in range(start, start + count):
        epoch, offset = divmod(idx, num_rows)
        if epoch not in cache:
            cache[epoch] = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(cache[epoch][offset]))
    return out
