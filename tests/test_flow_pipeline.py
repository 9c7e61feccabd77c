"""The Prefect pipeline end to end on the tiny recipe at test size, tracked in MLflow with artifacts on S3.

One module-scoped Prefect test server (its start-up dominates), one fresh runs folder and one moto S3
server (the MLflow artifact store) shared by the tests, which run in order: a full run, a cached
re-run whose gate keeps the champion, bad inputs, then an S3 outage during registration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")
pytest.importorskip("moto.server")

from helpers import SMALL, free_port, moto_s3, s3_keys  # noqa: E402

from opdlm.errors import OpdlmError  # noqa: E402
from opdlm.numbers import show_rate  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "tiny.yaml"
MODEL = "opdlm-tiny"
BUCKET = "mlflow-artifacts"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("pipeline")
    with moto_s3(BUCKET) as (endpoint, server):
        env = {
            "OPDLM_RUNS_DIR": str(root / "runs"),
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
            "OPDLM_ARTIFACT_ROOT": f"s3://{BUCKET}/mlflow",
            "TOKENIZERS_PARALLELISM": "false",
        }
        old = {k: os.environ.get(k) for k in [*env, "MLFLOW_TRACKING_URI"]}
        os.environ.update(env)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # the default: SQLite in the runs folder
        try:
            with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / "prefect-results"}):
                with prefect_test_harness(server_startup_timeout=60):
                    from flows.pipeline import pipeline_flow

                    yield SimpleNamespace(
                        flow=pipeline_flow,
                        runs=root / "runs",
                        endpoint=endpoint,
                        server=server,
                        uri=f"sqlite:///{root / 'runs' / 'mlruns.db'}",
                    )
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _client(pipeline):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=pipeline.uri, registry_uri=pipeline.uri)


def _runs(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.info.run_name: r for r in children}


def _alias(client, alias: str) -> str:
    return str(client.get_model_version_by_alias(MODEL, alias).version)


def _versions(client) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        return sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    except MlflowException:
        return []


def _flow_run_logs(flow_run_id) -> list[str]:
    """Every log line the Prefect server stored for the flow run (its tasks included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs are sent in batches in the background
    found, page = [], 200
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=page, offset=len(found)
            )
            found += [log.message for log in logs]
            if len(logs) < page:
                return found


def test_pipeline_runs_tracks_and_registers(pipeline):
    from prefect.client.orchestration import get_client

    # progress bars on, as in `make run`: they must not flood the stored logs
    verbose = [o for o in SMALL if o != "teacher.bootstrap.progress=false"]
    state = pipeline.flow(recipe=str(RECIPE), overrides=verbose, return_state=True)
    facts = state.result()
    client = _client(pipeline)

    assert facts["model_name"] == MODEL and facts["model_version"] == "1"
    assert _alias(client, "candidate") == "1"
    assert _alias(client, "champion") == "1"  # first version: no champion to beat
    parent = client.get_run(facts["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["train.stages.0.rollout_steps"] == "1"  # params come from the recipe
    stages = _runs(client, parent.info.run_id)
    assert set(stages) == {"data", "teacher", "convert", "train-short", "train-full", "eval", "register"}
    assert all(r.info.status == "FINISHED" for r in stages.values())

    # every training metric per step, with global rollout steps: the parent holds the whole curve
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "1_key/loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(stages["train-full"].info.run_id, "1_key/loss")] == [1]
    # stage settings are params of the stage run, not flat metric series
    assert stages["train-full"].data.params["measured.block_size"] == "4"
    assert not {"block_size", "train/block_size", "optimizer_steps", "train/optimizer_steps"} & set(parent.data.metrics)
    # the dataset is logged with its DVC md5 as digest
    data_dir = next((pipeline.runs / "store").glob("data-*"))
    md5 = json.loads((data_dir / "train.jsonl.info.json").read_text())["md5"]
    assert [d.dataset.digest for d in parent.inputs.dataset_inputs] == [md5]
    assert stages["data"].data.tags["dataset.md5"] == md5
    # eval numbers, the sweep's Pareto plot, training curves and the summary as artifacts
    assert 0.0 <= parent.data.metrics["1_key/synthetic_student_accuracy"] <= 1.0
    assert "synthetic/teacher_accuracy" in parent.data.metrics
    sweep = [a.path for a in client.list_artifacts(stages["eval"].info.run_id, "eval/sweep/synthetic")]
    assert "eval/sweep/synthetic/sweep_pareto.png" in sweep
    assert "train_curves.png" in [a.path for a in client.list_artifacts(stages["train-full"].info.run_id)]
    # the pipeline run is the one place to look: summary, card, recipe, every plot and the model's lineage
    assert {"recipe.yaml", "summary.md", "model_card.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "plots/train_curves.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    assert "plots/synthetic/sweep_pareto.png" in [
        a.path for a in client.list_artifacts(parent.info.run_id, "plots/synthetic")
    ]
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == parent.info.run_id and version.tags["register_run"] == stages["register"].info.run_id
    assert version.tags["tokens_per_step"] == show_rate(parent.data.metrics["synthetic/student_tokens_per_step"])
    assert facts["mlflow_runs_url"].endswith(
        f"/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning"
    )
    assert facts["mlflow_run_url"].endswith(f"/runs/{parent.info.run_id}?workflowType=machine_learning")
    # the weights went to the S3 artifact store, and the model card names teacher, data digest and gate
    assert any(k.endswith("artifacts/student/model.safetensors") for k in s3_keys(pipeline.endpoint, BUCKET))
    card = client.get_model_version(MODEL, "1").description
    assert md5 in card and "builtin:tiny" in card and "Champion gate" in card
    assert "## Recipe" not in card and len(card.splitlines()) < 40  # short: the recipe is a file

    from prefect.artifacts import Artifact

    summary = Artifact.get("opdlm-tiny-summary")
    assert summary is not None and facts["mlflow_run_id"] in summary.data
    link = Artifact.get("opdlm-tiny-mlflow-run")
    assert facts["mlflow_run_url"] in link.data  # a link artifact (Prefect stores it as markdown)
    scores = Artifact.get("opdlm-tiny-scores")
    assert scores.type == "table" and f"{parent.data.metrics['1_key/synthetic_student_accuracy']:.4g}" in scores.data

    # the flow run is named after the recipe and tagged with it and the MLflow run id
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
    assert flow_run.name == f"tiny-{Path(facts['run_dir']).name}"
    assert {"recipe:tiny", f"mlflow-run:{facts['mlflow_run_id']}"} <= set(flow_run.tags)
    # progress: a few lines per loop with the loop's figures, never a bar refresh per step
    logs = _flow_run_logs(flow_run_id)
    assert len(logs) < 100, f"{len(logs)} log lines"
    assert not any("\r" in line for line in logs)
    bootstrap = [line for line in logs if line.startswith("bootstrap teacher:")]
    assert 1 <= len(bootstrap) <= 11 and "100% 30/30" in bootstrap[-1] and "loss=" in bootstrap[-1]
    assert any(line.startswith("train: ") and "loss=" in line for line in logs)
    assert any("bootstrapping the teacher" in line for line in logs) and any("summary ->" in line for line in logs)

    # the registered model generates text with the block sampler in a fresh process
    code = (
        "import json, mlflow; m = mlflow.pyfunc.load_model('models:/opdlm-tiny@champion');"
        "out = m.predict({'prompt': ['12+35=', '7*6=']}, params={'max_new_tokens': 8});"
        "print(json.dumps(out.to_dict(orient='list')))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": pipeline.uri}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (
        len(out["text"]) == 2
        and all(n <= 8 for n in out["num_tokens"])
        and all(t >= 1.0 for t in out["tokens_per_step"])
    )


def test_rerun_is_cached_and_gate_keeps_a_better_champion(pipeline):
    client = _client(pipeline)
    client.set_model_version_tag(MODEL, "1", "gate.accuracy", "1.0")  # pretend the champion scored 100%
    facts = pipeline.flow(recipe=str(RECIPE), overrides=SMALL)

    assert facts["model_version"] == "2" and not facts["promoted"]
    assert "current champion" in facts["gate"]
    assert _alias(client, "candidate") == "2"
    assert _alias(client, "champion") == "1"
    stages = _runs(client, facts["mlflow_run_id"])
    # content-keyed caches: no stage repeated its work, and the curves were still logged
    cached = ("data", "teacher", "convert", "train-short", "train-full")
    assert {s: stages[s].data.tags["cached"] for s in cached} == dict.fromkeys(cached, "True")
    assert [m.step for m in client.get_metric_history(facts["mlflow_run_id"], "1_key/loss")] == [0, 1]


def _fails_without_registering(pipeline, overrides, match):
    client = _client(pipeline)
    before = _versions(client)
    with pytest.raises(OpdlmError, match=match):
        pipeline.flow(recipe=str(RECIPE), overrides=SMALL + overrides)
    assert _versions(client) == before


def test_malformed_rows_fail_naming_file_and_line(pipeline, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    good = {"question": "1+1=", "answer": "2", "domain": "math", "source": "test"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"answer": "3", "domain": "math", "source": "t"}) + "\n")
    _fails_without_registering(pipeline, [f"data.source={bad}"], r"prompts.jsonl:2: field 'question'")
    assert not list((pipeline.runs / "store").glob("data-*/.train.jsonl*"))  # no half-written output


def test_missing_teacher_fails_clearly(pipeline, tmp_path):
    _fails_without_registering(
        pipeline, [f"teacher.source={tmp_path / 'no-such-teacher'}"], "teacher.source: no such directory"
    )


def test_unreachable_s3_source_is_retried_then_fails(pipeline, monkeypatch):
    import tasks.data

    monkeypatch.setattr(tasks.data.download_data, "retries", 1)  # one task retry shows the behaviour; saves time
    monkeypatch.setattr(tasks.data.download_data, "retry_delay_seconds", [0])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    _fails_without_registering(
        pipeline, ["data.source=s3://opdlm-data/prompts.jsonl"], "download of s3://opdlm-data/prompts.jsonl failed"
    )


def test_s3_outage_during_registration_publishes_nothing(pipeline, monkeypatch):
    import tasks.register

    requirements = tasks.register._requirements

    def outage():  # the artifact store goes down just before the model upload starts
        pipeline.server.stop()
        return requirements()

    monkeypatch.setattr(tasks.register, "_requirements", outage)
    monkeypatch.setattr(tasks.register.register, "retries", 1)
    monkeypatch.setattr(tasks.register.register, "retry_delay_seconds", [0])
    client = _client(pipeline)
    before = _versions(client)
    with pytest.raises(OpdlmError, match="upload of model opdlm-tiny .* failed"):
        pipeline.flow(recipe=str(RECIPE), overrides=SMALL)
    assert _versions(client) == before
    assert _alias(client, "candidate") == before[-1]
    failed = client.search_runs(
        [client.get_experiment_by_name("opdlm-tiny").experiment_id],
        filter_string="attributes.run_name = 'register' and attributes.status = 'FAILED'",
    )
    assert failed  # the failed flow closed its MLflow runs
