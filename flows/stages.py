"""One flow per stage: each runs the chain up to its stage (earlier stages come from their caches)
and closes the MLflow parent run; ``opdlm-pipeline`` is the same chain plus the summary."""

from __future__ import annotations

from prefect import flow

from flows.chain import run_until
from tasks.flow_run import label_flow_run, recipe_run_name
from tasks.prepare import prepare_run
from tasks.report import close_failed_runs, finish_run

FLOW_OPTIONS = {"on_failure": [close_failed_runs], "on_crashed": [close_failed_runs], "flow_run_name": recipe_run_name}


def _until(recipe: str, overrides: list[str], last: str) -> dict:
    run_file = prepare_run(recipe, list(overrides))
    label_flow_run(run_file)
    return finish_run(run_file, run_until(run_file, last))


@flow(name="opdlm-data", log_prints=True, **FLOW_OPTIONS)
def data_flow(recipe: str = "configs/tiny.yaml", overrides: list[str] = []) -> dict:  # noqa: B006
    """Stage 1: fetch, validate and publish the training prompts."""
    return _until(recipe, overrides, "data")


@flow(name="opdlm-teacher", log_prints=True, **FLOW_OPTIONS)
def teacher_flow(recipe: str = "configs/tiny.yaml", overrides: list[str] = []) -> dict:  # noqa: B006
    """Stage 2: bootstrap, download or locate the teacher."""
    return _until(recipe, overrides, "teacher")


@flow(name="opdlm-convert", log_prints=True, **FLOW_OPTIONS)
def convert_flow(recipe: str = "configs/tiny.yaml", overrides: list[str] = []) -> dict:  # noqa: B006
    """Stage 3: convert the teacher into a block-diffusion student."""
    return _until(recipe, overrides, "convert")


@flow(name="opdlm-train", log_prints=True, **FLOW_OPTIONS)
def train_flow(recipe: str = "configs/tiny.yaml", overrides: list[str] = []) -> dict:  # noqa: B006
    """Stage 4: curriculum-staged OPD, one task per curriculum stage."""
    return _until(recipe, overrides, "train")


@flow(name="opdlm-evaluate", log_prints=True, **FLOW_OPTIONS)
def evaluate_flow(recipe: str = "configs/tiny.yaml", overrides: list[str] = []) -> dict:  # noqa: B006
    """Stage 5: teacher and student on the recipe's benchmarks, the sweep and its Pareto plot."""
    return _until(recipe, overrides, "evaluate")


@flow(name="opdlm-register", log_prints=True, **FLOW_OPTIONS)
def register_flow(recipe: str = "configs/tiny.yaml", overrides: list[str] = []) -> dict:  # noqa: B006
    """Stage 6: register the student (candidate; champion when the gate passes)."""
    return _until(recipe, overrides, "register")
