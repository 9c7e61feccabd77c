"""The state one pipeline run shares between its tasks, as a small JSON file in the run folder.

Tasks receive the path of this file (a path, not an object), so a retried task or a task run on
another worker finds the same recipe, folders and MLflow run ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from opdlm.config.recipe import Recipe, load_recipe
from opdlm.fsutil import atomic_write_text

RUN_FILE = "pipeline_run.json"


@dataclass
class PipelineRun:
    """One pipeline run.

    Attributes:
        runs_dir: the runs folder (``OPDLM_RUNS_DIR``) holding the content-addressed stage outputs.
        run_dir: the run's folder (``runs/<recipe>/<stamp>-<id>``).
        recipe_file: the resolved recipe (overrides applied) written into ``run_dir``.
        recipe_source: the recipe file the user gave.
        overrides: the dotted overrides the user gave.
        tracking_uri: MLflow tracking URI every task logs to.
        experiment_id: MLflow experiment.
        parent_run_id: the MLflow parent run; every stage is a nested run under it.
        code_version: git commit of the code.
        flow_run_id: the Prefect flow run (None outside a flow).
    """

    runs_dir: str
    run_dir: str
    recipe_file: str
    recipe_source: str
    overrides: list[str]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    code_version: str
    flow_run_id: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / RUN_FILE

    def tags(self) -> dict[str, str]:
        """Tags every stage's MLflow run carries (the Prefect flow run, so a failed flow can close them)."""
        return {"prefect.flow_run_id": self.flow_run_id} if self.flow_run_id else {}

    def store(self, stage: str, key: str) -> Path:
        """The content-addressed output folder of ``stage`` for ``key``."""
        from opdlm.pipeline.layout import store_dir

        return store_dir(stage, key, self.runs_dir)

    def recipe(self) -> Recipe:
        """The run's validated recipe (read again from its resolved file)."""
        return load_recipe(self.recipe_file)

    def save(self) -> str:
        atomic_write_text(self.path, json.dumps(asdict(self), indent=2) + "\n")
        return str(self.path)

    @classmethod
    def load(cls, path: str | Path) -> PipelineRun:
        return cls(**json.loads(Path(path).read_text()))
