"""The ``registry`` section of a recipe: where the trained student is registered and when it is promoted."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from opdlm.config.base import StrictModel


class RegistryConfig(StrictModel):
    """MLflow model registration and the champion gate (the pipeline's last stage).

    Every successful run becomes a new version with alias ``candidate``; alias ``champion`` moves to
    it only when the gate passes: student accuracy >= ``min_retention`` x teacher accuracy on
    ``gate_benchmark``, agreement and NLL ratio within ``min_agreement`` / ``max_nll_ratio`` when
    set, and not below the current champion's accuracy there.
    """

    model_name: str | None = Field(None, description="Registered model name (default: 'opdlm-' + recipe name).")
    gate_benchmark: str = Field(
        "synthetic",
        description="Benchmark whose accuracy the champion gate compares; one of eval.benchmarks (a recipe that "
        "leaves it out takes the first of them).",
    )
    min_retention: float = Field(
        0.9, ge=0.0, le=2.0, description="Student / teacher accuracy needed to become champion."
    )
    min_agreement: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Also require the student's agreement with the teacher's greedy completions (mean LCS F1, "
        "opdlm.eval.retention) >= this on gate_benchmark; for teachers whose accuracy is too low to retain. "
        "None = not gated. Needs eval.retention.",
    )
    max_nll_ratio: float | None = Field(
        None,
        gt=0.0,
        description="Also require the teacher's per-token NLL of the student's completions <= this x the NLL of the "
        "teacher's own on gate_benchmark. None = not gated. Needs eval.retention.",
    )
    not_below_champion: bool = Field(True, description="Also require accuracy >= the current champion's.")
    export_formats: list[Literal["sglang", "lmdeploy"]] = Field(
        default_factory=lambda: ["sglang", "lmdeploy"],
        description="Serving-engine exports logged with the registered version (`opdlm export`); a student an "
        "engine would mis-serve is recorded as refused instead. The export repeats the weights in the artifact store.",
    )
