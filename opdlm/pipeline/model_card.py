"""The registered model's card: what it is, what it was made from, and how well it does.

Rendered as Markdown for the MLflow model version's description and as ``model_card.md`` beside the
weights, from facts the pipeline gathered (nothing here reads files or talks to a service).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opdlm.data.synthetic import SUITE_SCOPE
from opdlm.numbers import show_count, show_fraction, show_rate
from opdlm.pipeline.serving import alias_note, serve_command, serving_alias
from opdlm.sources.builtin import BUILTIN_TEACHER


@dataclass
class ModelCardFacts:
    """Everything the card states.

    Attributes:
        model_name: registered model name.
        teacher: the teacher source (``builtin:tiny``, ``hf://Qwen/Qwen3-4B``, ...) and its fingerprint.
        data_source, data_digest, data_rows: training prompts and their DVC md5.
        code_version: git commit of the code that trained it (``+dirty`` when uncommitted changes existed).
        training_tokens: generated tokens the student trained on; ``rollout_steps`` and ``flops`` likewise.
        sampler_defaults: the sampler settings stored in the student's ``config.json``.
        scores: ``{benchmark: {student_accuracy, teacher_accuracy, retention, student_tokens_per_step, ...}}``.
        gate: the champion gate's reason line.
        promoted: whether the gate gave this version ``champion`` (the card's serve command names
            the alias the version really holds).
        mlflow_run_id: the pipeline's MLflow run (the model's source run).
    """

    model_name: str
    teacher: str
    teacher_fingerprint: str
    data_source: str
    data_digest: str
    data_rows: int
    code_version: str
    training_tokens: int
    rollout_steps: int
    flops: float
    sampler_defaults: dict
    scores: dict[str, dict]
    gate: str
    promoted: bool = False
    mlflow_run_id: str = ""
    extra: dict = field(default_factory=dict)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_model_card(facts: ModelCardFacts) -> str:
    """The card as Markdown, short enough for a model version's description (the full recipe is the
    ``recipe.yaml`` file beside the weights and in the pipeline run, not part of the card)."""
    lines = [
        f"# {facts.model_name}",
        "",
        "A block-diffusion language model distilled on-policy from an autoregressive teacher (opdlm).",
        "It decodes with the block-diffusion sampler: `mlflow.pyfunc.load_model(uri).predict({'prompt': [...]})`,",
        "or serve it from the activated venv with `MLFLOW_TRACKING_URI` set to the registry:",
        f"`{serve_command(facts.model_name, serving_alias(facts.promoted))}`.",
        alias_note(facts.promoted),
        "",
    ]
    if facts.teacher == BUILTIN_TEACHER:  # where a user first meets the tiny model: what it knows
        lines += [SUITE_SCOPE, ""]
    lines += [
        "## Scores",
        "",
        "| benchmark | student acc | teacher acc | retention | agreement | teacher NLL ratio | student tokens/step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in facts.scores.items():
        lines.append(
            f"| {name} | {show_fraction(s.get('student_accuracy'))} | {show_fraction(s.get('teacher_accuracy'))} | "
            f"{show_fraction(s.get('retention'))} | {show_fraction(s.get('student_agreement'))} | "
            f"{show_rate(s.get('student_nll_ratio'))} | {show_rate(s.get('student_tokens_per_step'))} |"
        )
    lines += [
        "",
        f"Champion gate: {facts.gate}",
        "",
        "## Provenance",
        "",
        "| | |",
        "| --- | --- |",
        f"| teacher | `{facts.teacher}` (fingerprint `{facts.teacher_fingerprint}`) |",
        f"| training data | `{facts.data_source}`, {facts.data_rows} rows, md5 `{facts.data_digest}` |",
        f"| code version | `{facts.code_version}` |",
        f"| training tokens | {show_count(facts.training_tokens)} over {facts.rollout_steps} rollout steps "
        f"({facts.flops:.3g} FLOPs) |",
    ]
    if facts.mlflow_run_id:
        lines.append(f"| MLflow run | `{facts.mlflow_run_id}` (plots, summary, recipe) |")
    for key, value in facts.extra.items():
        lines.append(f"| {key} | {_fmt(value)} |")
    sampler = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(facts.sampler_defaults.items()))
    lines += [
        "",
        f"Sampler defaults: {sampler}.",
        "",
        "Recipe: `recipe.yaml` beside the weights and in the MLflow run's artifacts.",
        "",
    ]
    return "\n".join(lines)
