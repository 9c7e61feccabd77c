"""Task ``register``: the student as an MLflow model version with a model card, alias and gate.

Every registered version gets alias ``candidate``; ``champion`` moves to it only when the recipe's
gate passes (:func:`opdlm.pipeline.gate.champion_gate`). The task runs only after every earlier
stage succeeded, and it checks the training finished and the gate benchmark was scored, so a failed
or partial run never registers. A retry finds the version it already made (tagged with the
pipeline's MLflow run) instead of registering a second one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_write_text
from opdlm.numbers import show_count, show_fraction, show_rate
from opdlm.pipeline.gate import champion_gate
from opdlm.pipeline.model_card import ModelCardFacts, render_model_card
from opdlm.pipeline.serving import CANDIDATE, CHAMPION
from opdlm.pipeline.stages import data_source, student_stage
from opdlm.train.checkpoint import verify_checkpoint
from opdlm.train.flops import summary_total_flops
from opdlm.train.folder import TrainingFolder
from tasks import tracking
from tasks.context import PipelineRun
from tasks.engine_exports import log_engine_exports
from tasks.retry import retry_transient

PYFUNC_FILE = Path(__file__).with_name("student_pyfunc.py")
SOURCE_ROOT = Path(__file__).resolve().parents[1]
GATE_ACCURACY_TAG = "gate.accuracy"
PIPELINE_RUN_TAG = "opdlm.pipeline_run"
MAX_DESCRIPTION = 5000  # MLflow's limit on a model version description
MODEL_CARD_FILE, RECIPE_FILE = "model_card.md", "recipe.yaml"


def model_name(run: PipelineRun) -> str:
    recipe = run.recipe()
    return recipe.registry.model_name or f"opdlm-{recipe.name}"


def _signature(sampler_defaults: dict):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType

    return ModelSignature(
        # Any, not string: MLflow casts a string column with numpy, which turns a null prompt into the text
        # "None" before predict sees it; untyped, a null or a number reaches the request check and is refused
        inputs=Schema([ColSpec(AnyType(), "prompt")]),
        outputs=Schema(
            [
                ColSpec("string", "text"),
                ColSpec("double", "tokens_per_step"),
                ColSpec("long", "num_tokens"),
                ColSpec("long", "num_forwards"),
                ColSpec("boolean", "finished"),
            ]
        ),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", int(sampler_defaults["max_new_tokens"])),
                ParamSpec("threshold", "double", float(sampler_defaults["threshold"])),
                ParamSpec("temperature", "double", float(sampler_defaults["temperature"])),
                ParamSpec("top_k", "long", int(sampler_defaults.get("top_k", 0))),
                ParamSpec("top_p", "double", float(sampler_defaults.get("top_p", 1.0))),
                ParamSpec("seed", "long", 0),
                ParamSpec("raw_prompt", "boolean", False),
            ]
        ),
    )


def _requirements() -> list[str]:
    """What the model's environment installs: opdlm's own dependencies (no extras) at the versions
    this process runs, plus pandas. opdlm itself is not on a package index; it travels with the
    model as code (:func:`_code_dir`)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    pyproject = SOURCE_ROOT / "pyproject.toml"
    if pyproject.is_file():  # a source checkout: the dependencies of the code being shipped
        import tomllib

        declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    else:
        declared = requires("opdlm") or []
    names = [r.name for r in map(Requirement, declared) if r.marker is None or "extra" not in str(r.marker)]
    pins = []
    for name in [*names, "pandas"]:
        try:  # a local version label (2.13.0+cpu) would tie the model to one build of torch
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _code_dir(tmp: Path) -> Path:
    """A copy of the ``opdlm`` package (without bytecode) for the model's ``code_paths``: MLflow puts
    it on ``sys.path`` when the model loads, in this environment or a fresh one."""
    import opdlm

    out = tmp / "opdlm"
    shutil.copytree(Path(opdlm.__file__).parent, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def log_student_model(run_id: str, student_dir: str | Path, sampler_defaults: dict, metadata: dict):
    """Log ``student_dir`` as the pyfunc model ``student`` of MLflow run ``run_id``; returns MLflow's ModelInfo.

    The model carries what a fresh environment needs: the weights (artifact ``student``), the opdlm
    code (``code_paths``) and pinned requirements, so ``mlflow models serve`` works with
    ``--env-manager local`` and with the default virtualenv manager alike.
    """
    import mlflow
    from mlflow.models import Model

    # created first in the run's experiment: Model.log alone would file it under the default experiment
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    logged = mlflow.initialize_logged_model(name="student", source_run_id=run_id, experiment_id=experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        return Model.log(
            artifact_path=None,
            name="student",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(PYFUNC_FILE),
            artifacts={"student": str(student_dir)},
            code_paths=[str(_code_dir(Path(tmp)))],
            signature=_signature(sampler_defaults),
            pip_requirements=_requirements(),
            metadata=metadata,
        )


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


def _card_facts(
    run, name, teacher_record, data_record, final_record, scores, decision, train_summary, sampler
) -> ModelCardFacts:
    recipe = run.recipe()
    return ModelCardFacts(
        model_name=name,
        teacher=teacher_record["source"],
        teacher_fingerprint=teacher_record["fingerprint"],
        data_source=data_source(recipe),
        data_digest=data_record["md5"],
        data_rows=data_record["n_rows"],
        code_version=run.code_version,
        training_tokens=int(train_summary.get("cumulative_train_tokens", 0)),
        rollout_steps=int(train_summary.get("rollout_step", final_record["rollout_step"])),
        flops=summary_total_flops(train_summary.get("flops", 0.0)),
        sampler_defaults=sampler,
        scores=scores,
        gate=decision.reason,
        promoted=decision.promote,
        mlflow_run_id=run.parent_run_id,
    )


@task(
    name="register", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE
)
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
    folder, total = TrainingFolder(final_record["train_dir"]), recipe.train.total_rollout_steps
    train_summary = folder.summary()
    if not folder.is_finished(total) or final_record["rollout_step"] != total:
        raise OpdlmError(
            f"training in {final_record['train_dir']} did not finish every curriculum stage; not registering"
        )
    verify_checkpoint(checkpoint)
    metrics = eval_record["metrics"]
    bench = recipe.registry.gate_benchmark
    if bench not in metrics or metrics[bench]["teacher_accuracy"] is None:
        raise OpdlmError(
            f"registry.gate_benchmark {bench!r} was not scored for student and teacher "
            f"(eval.benchmarks: {', '.join(recipe.eval.benchmarks)}); not registering"
        )

    name = model_name(run)
    client = tracking.client_for(run.tracking_uri)
    student_acc, teacher_acc = metrics[bench]["student_accuracy"], metrics[bench]["teacher_accuracy"]
    decision = champion_gate(
        student_acc,
        teacher_acc,
        _champion_accuracy(client, name, bench),
        recipe.registry,
        agreement=metrics[bench].get("student_agreement"),
        nll_ratio=metrics[bench].get("student_nll_ratio"),
    )

    student_dir = Path(run.run_dir) / "student"
    student_stage(
        folder.path, student_dir, total, overwrite=True
    )  # this run's own; model files only: no optimizer state in the registry
    sampler = json.loads((student_dir / "config.json").read_text()).get("sampler_defaults", recipe.sampler.model_dump())
    shutil.copyfile(run.recipe_file, student_dir / RECIPE_FILE)  # the full recipe travels with the weights
    facts = _card_facts(run, name, teacher_record, data_record, final_record, metrics, decision, train_summary, sampler)
    card = render_model_card(facts)
    atomic_write_text(student_dir / "README.md", card)
    atomic_write_text(Path(run.run_dir) / MODEL_CARD_FILE, card)

    with tracking.stage_run(client, run.experiment_id, run.parent_run_id, "register", run.tags()) as run_id:
        version = _existing_version(client, name, run.parent_run_id)
        if version is None:
            # logged into the pipeline run, so the version's source run is the run a person opens
            with tracking.artifact_upload(f"model {name} ({student_dir})"):
                info = log_student_model(
                    run.parent_run_id,
                    student_dir,
                    sampler,
                    {
                        "teacher": teacher_record["source"],
                        "data_md5": data_record["md5"],
                        "code_version": run.code_version,
                    },
                )
            tracking.log_artifacts(client, run.parent_run_id, [Path(run.run_dir) / MODEL_CARD_FILE])
            log_engine_exports(
                run.parent_run_id, student_dir, Path(run.run_dir) / "export", recipe.registry.export_formats
            )
            tags = {  # figures as people read them (opdlm.numbers); gate.accuracy exact: the gate reads it
                PIPELINE_RUN_TAG: run.parent_run_id,
                "gate.benchmark": bench,
                GATE_ACCURACY_TAG: str(student_acc),
                "teacher_accuracy": show_fraction(teacher_acc),
                "retention": show_fraction(metrics[bench]["retention"]),
                "tokens_per_step": show_rate(metrics[bench]["student_tokens_per_step"]),
                "teacher_agreement": show_fraction(metrics[bench].get("student_agreement")),
                "teacher_nll_ratio": show_rate(metrics[bench].get("student_nll_ratio")),
                "data_md5": data_record["md5"],
                "teacher": teacher_record["source"],
                "code_version": run.code_version,
                "training_tokens": show_count(train_summary.get("cumulative_train_tokens")),
                "register_run": run_id,
            }
            version = mlflow.register_model(info.model_uri, name, tags=tags)
            client.update_model_version(name, version.version, description=card[:MAX_DESCRIPTION])
        client.set_registered_model_alias(name, CANDIDATE, version.version)
        if decision.promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
        aliases = [CANDIDATE] + ([CHAMPION] if decision.promote else [])
        tracking.log_params(client, run_id, {"model_name": name, "version": version.version})
        tracking.set_tags(client, run_id, {"gate.reason": decision.reason, "aliases": ",".join(aliases)})
        tracking.log_metrics(
            client,
            run_id,
            {"gate.promoted": float(decision.promote), "gate.required_accuracy": decision.required_accuracy},
        )
        logger.info(
            "registered %s version %s (%s); gate: %s", name, version.version, ", ".join(aliases), decision.reason
        )
    return {
        "name": name,
        "version": str(version.version),
        "aliases": aliases,
        "promoted": decision.promote,
        "gate": decision.reason,
        "model_uri": f"models:/{name}/{version.version}",
    }
