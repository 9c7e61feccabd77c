"""Flow ``opdlm-pipeline``: data -> teacher -> convert -> curriculum OPD -> eval -> register, one recipe.

Run it with ``opdlm pipeline --recipe configs/tiny.yaml [key=value ...]`` (ephemeral Prefect unless
``PREFECT_API_URL`` points at a server) or from a deployment in ``prefect.yaml``.
"""

from __future__ import annotations

from prefect import flow

from flows.chain import run_until
from tasks.flow_run import label_flow_run, publish_scores, recipe_run_name
from tasks.prepare import prepare_run
from tasks.report import close_failed_runs, summarise


@flow(
    name="opdlm-pipeline",
    flow_run_name=recipe_run_name,
    log_prints=True,
    on_failure=[close_failed_runs],
    on_crashed=[close_failed_runs],
)
# A literal list default (B006) on purpose: Prefect shows it in the deployment form.
def pipeline_flow(recipe: str = "configs/tiny.yaml", overrides: list[str] = []) -> dict:  # noqa: B006
    """The whole pipeline for ``recipe`` with dotted ``overrides``; returns the run summary.

    Args:
        recipe: recipe YAML (path relative to the working directory).
        overrides: dotted ``key=value`` overrides, e.g. ``train.stages.0.rollout_steps=5``.
    """
    run_file = prepare_run(recipe, list(overrides))
    label_flow_run(run_file)
    records = run_until(run_file, "register")
    publish_scores(run_file, records["evaluate"])
    return summarise(run_file, records["evaluate"], records["train"], records["register"])
