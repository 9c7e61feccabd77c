"""The content keys of the stages: what each stage's output depends on, hashed.

Prefect caches tasks on these keys and the stage outputs live in ``runs/store/<stage>-<key>``, so a
key must change whenever the output could, and never because a path or an object changed.
"""

from __future__ import annotations

from pathlib import Path

from opdlm.config.recipe import Recipe
from opdlm.pipeline.fingerprint import config_hash
from opdlm.pipeline.stages import data_source, training_seed
from opdlm.sources.builtin import BUILTIN_TEACHER
from opdlm.sources.resolve import teacher_source


def data_key(recipe: Recipe) -> str | None:
    """Key of the data stage: the data section and seed, plus the file's bytes for a local source.

    Remote sources (hf://, s3://, https://) return None: their content can change behind the same
    name, so they are fetched again each run (DVC records the md5 of what was fetched).
    """
    from opdlm.data.download import file_digests

    source = data_source(recipe)
    settings = recipe.data.model_dump(exclude={"source", "path"})
    if source.startswith("builtin:"):
        content = {"builtin": source, "num_prompts": recipe.train.num_prompts}
    elif "://" not in source:
        path = Path(source).expanduser()
        if not path.is_file():
            return None  # a directory or a missing file: the stage itself reports it
        content = {"md5": file_digests(path)[0]}  # the bytes, not the file's name or place
    else:
        return None
    return config_hash("data", settings, training_seed(recipe), content)


def teacher_key(recipe: Recipe) -> str | None:
    """Key of the bootstrapped ``builtin:tiny`` teacher (its settings); None for other sources,
    which need no work beyond resolving them."""
    if teacher_source(recipe) != BUILTIN_TEACHER:
        return None
    return config_hash("teacher", BUILTIN_TEACHER, recipe.teacher.weights_settings()["bootstrap"])


def convert_key(recipe: Recipe, teacher_fingerprint: str) -> str:
    """Key of the converted student: the teacher's bytes, the convert section and the sampler defaults."""
    return config_hash("convert", teacher_fingerprint, recipe.convert, recipe.sampler)


def train_key(recipe: Recipe, student_key: str, data_md5: str, teacher_fingerprint: str) -> str:
    """Key of a training run (shared by its curriculum stages): student, data, teacher and every recipe
    section the trainer fingerprints its output folder by (train, seed, convert, data, teacher), so a
    folder found under this key always belongs to the same training run."""
    sections = [recipe.train, recipe.seed, recipe.convert, recipe.data, recipe.teacher.weights_settings()]
    return config_hash("train", student_key, data_md5, teacher_fingerprint, sections, training_seed(recipe))


def eval_key(model_key: str, recipe: Recipe, what: str) -> str:
    """Key of an evaluation (``what``: teacher, student or sweep) of the model with key ``model_key``."""
    return config_hash("eval", what, model_key, recipe.eval, recipe.sampler)
