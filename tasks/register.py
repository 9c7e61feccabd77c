"""Task ``register``: the student as an MLflow model version with a model card, alias and gate.

Every registered version gets alias ``candidate``; ``champion`` moves to it only when the recipe's
gate passes (:func:`opdlm.pipeline.gate.champion_gate`). The task runs only after every earlier
stage succeeded, and it checks the training finished and the gate benchmark was scored, so a failed
or partial run never registers. A retry finds the version it already made (tagged with the
pipeline's MLflow run) instead of registering a second one.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_write_text
from opdlm.pipeline.gate import champion_gate
from opdlm.pipeline.model_card import ModelCardFacts, render_model_card
from opdlm.pipeline.stages import data_source
from opdlm.train.checkpoint import export_model, verify_checkpoint
from tasks import tracking
from tasks.context import PipelineRun
from tasks.engine_exports import log_engine_exports
from tasks.retry import retry_transient

PYFUNC_FILE = Path(__file__).with_name("student_pyfunc.py")
CANDIDATE, CHAMPION = "candidate", "champion"
GATE_ACCURACY_TAG = "gate.accuracy"
PIPELINE_RUN_TAG = "opdlm.pipeline_run"
MAX_DESCRIPTION = 5000  # MLflow's limit on a model version description


def model_name(run: PipelineRun) -> str:
    recipe = run.recipe()
    return recipe.registry.model_name or f"opdlm-{recipe.name}"


def _signature(sampler_defaults: dict):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string", "text"), ColSpec("double", "tokens_per_step"), ColSpec("long", "num_tokens"),
                        ColSpec("long", "num_forwards"), ColSpec("boolean", "finished")]),
        params=ParamSchema([
            ParamSpec("max_new_tokens", "long", int(sampler_defaults["max_new_tokens"])),
            ParamSpec("threshold", "double", float(sampler_defaults["threshold"])),
            ParamSpec("temperature", "double", float(sampler_defaults["temperature"])),
            ParamSpec("seed", "long", 0),
            ParamSpec("raw_prompt", "boolean", False),
        ]),
    )  # fmt: skip


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("opdlm", "torch", "transformers", "safetensors", "pandas")]


def _champion_accuracy(client, name: str, benchmark: str) -> float | None:
    """The current champion's gate accuracy (None when there is no champion or it was gated elsewhere)."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if champion.tags.get("gate.benchmark") != benchmark or GATE_ACCURACY_TAG not in champion.tags:
        return None
    return float(champion.tags[GATE_ACCURACY_TAG])


def _existing_version(client, name: str, parent_run_id: str):
    """The version this pipeline run already registered (a retried task), or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{PIPELINE_RUN_TAG}` = '{parent_run_id}'")
    except MlflowException:
        return None
    return found[0] if found else None


def _card_facts(run, name, teacher_record, data_record, final_record, scores, gate_reason, train_summary, sampler) -> ModelCardFacts:
    recipe = run.recipe()
    return ModelCardFacts(
        model_name=name, teacher=teacher_record["source"], teacher_fingerprint=teacher_record["fingerprint"],
        data_source=data_source(recipe), data_digest=data_record["md5"], data_rows=data_record["n_rows"],
        code_version=run.code_version, training_tokens=int(train_summary.get("cumulative_train_tokens", 0)),
        rollout_steps=int(train_summary.get("rollout_step", final_record["rollout_step"])),
        flops=float(train_summary.get("flops", 0.0)), sampler_defaults=sampler, scores=scores, gate=gate_reason,
        recipe_yaml=yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), mlflow_run_id=run.parent_run_id,
    )  # fmt: skip


@task(name="register", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def register(run_file: str, teacher_record: dict, data_record: dict, final_record: dict, eval_record: dict) -> dict:
    """Stage 6: register the student, write its card, set ``candidate`` and (gate passing) ``champion``.

    Returns:
        ``{"name", "version", "aliases", "promoted", "gate", "model_uri"}``.

    Raises:
        OpdlmError: training did not finish, the checkpoint fails its manifest, or the gate
            benchmark was not scored (nothing is registered).
    """
    import mlflow

    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    recipe = run.recipe()
    checkpoint = Path(final_record["checkpoint"])
    train_summary_path = Path(final_record["train_dir"]) / "train_summary.json"
    train_summary = json.loads(train_summary_path.read_text()) if train_summary_path.is_file() else {}
    if not train_summary.get("finished") or final_record["rollout_step"] != recipe.train.total_rollout_steps:
        raise OpdlmError(f"training in {final_record['train_dir']} did not finish every curriculum stage; not registering")
    verify_checkpoint(checkpoint)
    metrics = eval_record["metrics"]
    bench = recipe.registry.gate_benchmark
    if bench not in metrics or metrics[bench]["teacher_accuracy"] is None:
        raise OpdlmError(f"registry.gate_benchmark {bench!r} was not scored for student and teacher "
                         f"(eval.benchmarks: {', '.join(recipe.eval.benchmarks)}); not registering")  # fmt: skip

    name = model_name(run)
    client = tracking.client_for(run.tracking_uri)
    student_acc, teacher_acc = metrics[bench]["student_accuracy"], metrics[bench]["teacher_accuracy"]
    decision = champion_gate(student_acc, teacher_acc, _champion_accuracy(client, name, bench), recipe.registry)

    student_dir = Path(run.run_dir) / "student"
    student_dir.mkdir(parents=True, exist_ok=True)
    export_model(checkpoint, student_dir)  # model files only: no optimizer state in the registry
    sampler = json.loads((student_dir / "config.json").read_text()).get("sampler_defaults", recipe.sampler.model_dump())
    facts = _card_facts(run, name, teacher_record, data_record, final_record, metrics, decision.reason, train_summary, sampler)
    card = render_model_card(facts)
    atomic_write_text(student_dir / "README.md", card)
    atomic_write_text(Path(run.run_dir) / "model_card.md", card)

    with tracking.stage_run(client, run.experiment_id, run.parent_run_id, "register", run.tags()) as run_id:
        version = _existing_version(client, name, run.parent_run_id)
        if version is None:
            with mlflow.start_run(run_id=run_id), tracking.artifact_upload(f"model {name} ({student_dir})"):
                info = mlflow.pyfunc.log_model(
                    name="student", python_model=str(PYFUNC_FILE), artifacts={"student": str(student_dir)},
                    signature=_signature(sampler), pip_requirements=_requirements(),
                    metadata={"teacher": teacher_record["source"], "data_md5": data_record["md5"],
                              "code_version": run.code_version},
                )  # fmt: skip
                mlflow.log_artifact(str(Path(run.run_dir) / "model_card.md"))
                log_engine_exports(student_dir, Path(run.run_dir) / "export", recipe.registry.export_formats)
            tags = {
                PIPELINE_RUN_TAG: run.parent_run_id, "gate.benchmark": bench, GATE_ACCURACY_TAG: student_acc,
                "teacher_accuracy": teacher_acc, "retention": metrics[bench]["retention"],
                "tokens_per_step": metrics[bench]["student_tokens_per_step"], "data_md5": data_record["md5"],
                "teacher": teacher_record["source"], "code_version": run.code_version,
                "training_tokens": train_summary.get("cumulative_train_tokens"),
            }  # fmt: skip
            version = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})
            short = card if len(card) <= MAX_DESCRIPTION else render_model_card(facts, include_recipe=False)
            client.update_model_version(name, version.version, description=short[:MAX_DESCRIPTION])
        client.set_registered_model_alias(name, CANDIDATE, version.version)
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
        aliases = [CANDIDATE] + ([CHAMPION] if decision.promote else [])
        tracking.log_params(client, run_id, {"model_name": name, "version": version.version})
        tracking.set_tags(client, run_id, {"gate.reason": decision.reason, "aliases": ",".join(aliases)})
        tracking.log_metrics(client, run_id, {"gate.promoted": float(decision.promote),
                                              "gate.required_accuracy": decision.required_accuracy})  # fmt: skip
        logger.info("registered %s version %s (%s); gate: %s", name, version.version, ", ".join(aliases), decision.reason)
    return {"name": name, "version": str(version.version), "aliases": aliases, "promoted": decision.promote,
            "gate": decision.reason, "model_uri": f"models:/{name}/{version.version}"}  # fmt: skip
