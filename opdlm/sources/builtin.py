"""``builtin:tiny``: the tiny teacher, bootstrapped on the synthetic suite with a recipe's settings.

The one place a ``builtin:`` model source becomes a directory, in process (:func:`builtin_teacher`:
into a given folder, or into the cache) or as the ``opdlm teacher bootstrap`` command a pipeline
runs in its own process (:func:`bootstrap_command`). Both take the settings from the recipe's
``teacher`` section (``teacher.bootstrap``) and its ``convert.enable_thinking``, so every way of
asking for ``builtin:tiny`` (the pipeline, ``opdlm train``, the study, ``opdlm convert``) builds the
same teacher from the same recipe.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from opdlm.config.recipe import Recipe
from opdlm.config.teacher import TeacherConfig
from opdlm.errors import SourceError
from opdlm.sources.cache import cache_dir

BUILTIN_PREFIX = "builtin:"
BUILTIN_TEACHER = "builtin:tiny"


def builtin_key(teacher: TeacherConfig) -> str:
    """The cache key of ``builtin:tiny`` built with ``teacher``: a hash of the settings that decide its weights.

    ``convert.enable_thinking`` is passed to the bootstrap but not hashed: the tiny tokenizer's chat
    template has no thinking variable, so both modes train the same weights.
    """
    settings = teacher.weights_settings()["bootstrap"]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def builtin_teacher(
    src: str, teacher: TeacherConfig, enable_thinking: bool = False, out_dir: str | Path | None = None
) -> Path:
    """The directory of built-in model ``src``, trained with ``teacher.bootstrap``.

    Args:
        src: a ``builtin:`` source; only ``builtin:tiny`` exists.
        teacher: the recipe's ``teacher`` section (its ``bootstrap`` settings train the model).
        enable_thinking: the recipe's ``convert.enable_thinking`` (the prompts' thinking mode).
        out_dir: train into this folder (replaced); None: into the cache, reused when already built.

    Raises:
        SourceError: an unknown ``builtin:`` name.
    """
    if src != BUILTIN_TEACHER:
        from opdlm.sources.gguf import NAMED_GGUF

        raise SourceError(f"unknown builtin model {src!r} (known: {', '.join([BUILTIN_TEACHER, *NAMED_GGUF])})")
    from opdlm.teacher import bootstrap_teacher

    if out_dir is None:
        out_dir = cache_dir() / "builtin" / f"tiny-{builtin_key(teacher)}"
        if (out_dir / "config.json").is_file():
            return out_dir
    bootstrap_teacher(out_dir, teacher.bootstrap, overwrite=True, enable_thinking=enable_thinking)
    return Path(out_dir).absolute()


def bootstrap_command(recipe: Recipe, out_dir: str | Path, python: str | None = None) -> list[str]:
    """The ``opdlm teacher bootstrap`` command that trains ``builtin:tiny`` with the recipe's settings.

    The pipeline runs it as a subprocess (it is a training job of a few minutes); every
    ``teacher.bootstrap`` field is passed as a ``key=value`` override, so the command alone says
    exactly what was trained.
    """
    import sys

    import yaml

    settings = recipe.teacher.bootstrap.model_dump(mode="json")
    overrides = [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in settings.items()
    ]
    thinking = "--enable-thinking" if recipe.convert.enable_thinking else "--no-enable-thinking"
    return [
        python or sys.executable,
        "-m",
        "opdlm.cli.main",
        "teacher",
        "bootstrap",
        "--out",
        str(out_dir),
        "--overwrite",
        thinking,
        *overrides,
    ]
