"""Training rows and the deterministic order in which rollout batches draw them.

The prompt stream is an endless sequence of epochs, each a seeded permutation of the rows, so the
prompts of rollout step ``s`` depend only on ``(seed, s)``: the data cursor is
``s * prompts_per_rollout`` and a resumed run draws exactly the prompts it would have drawn.
"""

from __future__ import annotations

from pathlib import Path

import torch

from opdlm.config.recipe import Recipe
from opdlm.data.schema import Row, read_rows
from opdlm.data.skills import select_skills
from opdlm.errors import OpdlmError


def load_training_rows(
    source: str, path: str | None, num_prompts: int | None, seed: int, skills: list[str] | None = None
) -> list[Row]:
    """Rows from ``path`` (JSONL) when given, else from ``source`` (a ``builtin:`` name or a JSONL path).

    ``skills`` (``data.skills``): keep only rows of these skills; builtin:synthetic draws
    ``num_prompts`` rows from those families alone (:mod:`opdlm.data.skills`).
    """
    if path:
        return select_skills(read_rows(path), skills, str(path))
    if source.startswith("builtin:"):
        from opdlm.data.builtin import builtin_rows

        return builtin_rows(source, num_prompts, seed, skills)
    if Path(source).is_file():
        return select_skills(read_rows(source), skills, source)
    raise OpdlmError(f"data source {source!r}: not a builtin: source and not a JSONL file (pass --data FILE)")


def recipe_training_rows(
    recipe: Recipe, seed: int, data: str | None = None, teacher_dir: str | Path | None = None, progress: bool = True
) -> list[Row]:
    """The rows a run of ``recipe`` trains on: :func:`load_training_rows` with the recipe's data settings,
    their responses replaced by the teacher's greedy completions when ``data.responses`` is ``teacher_greedy``
    (:mod:`opdlm.eval.completions`, cached by content; needs ``teacher_dir``).

    Args:
        data: a JSONL path that replaces ``data.path`` (``opdlm train --data``).
    """
    cfg = recipe.train
    rows = load_training_rows(recipe.data.source, data or recipe.data.path, cfg.num_prompts, seed, recipe.data.skills)
    if recipe.data.responses != "teacher_greedy":
        return rows
    if teacher_dir is None:
        raise OpdlmError("data.responses=teacher_greedy needs the teacher's directory to generate its completions")
    from opdlm.eval.completions import teacher_completion_rows

    return teacher_completion_rows(
        teacher_dir,
        rows,
        max_new_tokens=max(s.length.end for s in cfg.stages),  # the largest cap training cuts responses at
        math_suffix=cfg.math_suffix,
        enable_thinking=recipe.convert.enable_thinking,
        batch_size=recipe.eval.batch_size,
        device=cfg.device,
        progress=progress,
    )


def stream_indices(num_rows: int, start: int, count: int, seed: int) -> list[int]:
    """Row indices ``start .. start + count`` of the epoch-permuted stream."""
    out, cache = [], {}
    for idx in range(start, start + count):
        epoch, offset = divmod(idx, num_rows)
        if epoch not in cache:
            cache[epoch] = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(cache[epoch][offset]))
    return out
