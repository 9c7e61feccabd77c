"""The sources layer: ``builtin:tiny`` is built in one place, always with the recipe's teacher settings.

The bootstrap itself (minutes of training, covered by ``tests/test_bootstrap.py``) is replaced by a
copy of the random tiny teacher, so these run in seconds and say only who asks for what.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from opdlm.config.recipe import Recipe
from opdlm.errors import OpdlmError, SourceError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bootstraps(monkeypatch, tmp_path, tiny_teacher_dir) -> list[dict]:
    """Every bootstrap asked for, as ``{"out", "config", "enable_thinking"}``; the cache under ``tmp_path``."""
    import opdlm.teacher

    calls: list[dict] = []

    def fake(out_dir, config=None, overwrite=False, enable_thinking=False):
        calls.append({"out": Path(out_dir), "config": config, "enable_thinking": enable_thinking})
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(tiny_teacher_dir, out_dir)
        return {}

    monkeypatch.setattr(opdlm.teacher, "bootstrap_teacher", fake)
    monkeypatch.setenv("OPDLM_CACHE", str(tmp_path / "cache"))
    return calls


def _recipe(steps: int = 77, progress: bool = True, thinking: bool = True) -> Recipe:
    return Recipe.model_validate(
        {"teacher": {"bootstrap": {"steps": steps, "progress": progress}}, "convert": {"enable_thinking": thinking}}
    )


def test_builtin_tiny_is_built_with_the_recipes_settings_and_reused(bootstraps, tmp_path):
    from opdlm.sources.resolve import resolve_teacher

    recipe = _recipe()
    path = resolve_teacher(recipe)
    assert [(c["config"], c["enable_thinking"]) for c in bootstraps] == [(recipe.teacher.bootstrap, True)]
    assert path.parent == (tmp_path / "cache" / "builtin").absolute() and (path / "config.json").is_file()
    assert resolve_teacher(recipe) == path and len(bootstraps) == 1  # cached
    assert resolve_teacher(_recipe(progress=False)) == path and len(bootstraps) == 1  # display is not a setting
    assert resolve_teacher(_recipe(steps=78)) != path and bootstraps[-1]["config"].steps == 78


def test_every_caller_asks_for_the_recipes_teacher(bootstraps, tmp_path):
    """The pipeline's teacher stage and the recipe's convert both build with teacher.bootstrap."""
    from opdlm.pipeline.stages import teacher_stage
    from opdlm.sources.convert import convert_teacher

    recipe = _recipe(steps=55)
    assert teacher_stage(recipe, tmp_path / "stage") == (tmp_path / "stage").absolute()
    student = convert_teacher(  # as the convert stage calls it
        "builtin:tiny", tmp_path / "student", enable_thinking=True, teacher_config=recipe.teacher
    )
    assert (student / "config.json").is_file()
    assert [c["config"].steps for c in bootstraps] == [55, 55]  # the stage's folder, then the cache (reused)
    assert all(c["enable_thinking"] for c in bootstraps)


def test_opdlm_train_resolves_builtin_tiny_through_the_sources_layer(monkeypatch, tmp_path):
    """``opdlm train`` without ``--teacher`` builds the recipe's builtin:tiny instead of refusing it."""
    import opdlm.sources.resolve
    from opdlm.config.recipe import load_recipe
    from opdlm.train.setup import setup_run

    asked = []

    def resolver(recipe, override=None):
        asked.append((recipe, override))
        raise OpdlmError("reached the sources layer")

    monkeypatch.setattr(opdlm.sources.resolve, "resolve_teacher", resolver)
    recipe = load_recipe(REPO / "configs" / "tiny.yaml", ["train.num_prompts=8"])
    with pytest.raises(OpdlmError, match="reached the sources layer"):
        setup_run(recipe, tmp_path / "out")
    assert asked == [(recipe, None)] and not (tmp_path / "out").exists()


def test_unknown_sources_are_one_line():
    from opdlm.sources.resolve import resolve_model_source

    with pytest.raises(
        SourceError,
        match="unknown builtin model 'builtin:huge' \\(known: builtin:tiny, builtin:smollm2-135m-instruct\\)",
    ):
        resolve_model_source("builtin:huge")
    with pytest.raises(SourceError, match=r"unsupported scheme 'gs://' \(registered: builtin:, hf://, s3://;"):
        resolve_model_source("gs://bucket/model")
