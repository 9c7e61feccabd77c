"""Task ``data``: fetch, validate and publish the training prompts; log them as an MLflow dataset.

The published JSONL is named by its content key; its md5 (what DVC records for the same file) is the
dataset digest in MLflow and part of every later stage's key.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.pipeline.keys import data_key
from opdlm.pipeline.stages import data_source, data_stage
from tasks import tracking
from tasks.caching import content_cache_key, run_cached
from tasks.context import PipelineRun
from tasks.retry import retry_transient

DATA_FILE = "train.jsonl"


def _output(run: PipelineRun) -> tuple[str | None, Path | None]:
    key = data_key(run.recipe())
    return key, (run.store("data", key) / (DATA_FILE + ".info.json")) if key else None


@task(
    name="download-data",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_transient,
    cache_key_fn=content_cache_key("data", lambda run, params: _output(run)[0]),
    persist_result=True,
)
def download_data(run_file: str) -> dict:
    """Publish the recipe's data as normalised JSONL (reused when its content key is already published).

    Returns:
        The dataset record: path, source, n_rows, md5, sha256.
    """
    run = PipelineRun.load(run_file)
    key, info_file = _output(run)
    if info_file is not None and info_file.is_file():
        return json.loads(info_file.read_text())
    folder = run.store("data", key) if key else Path(run.run_dir) / "data"
    return data_stage(run.recipe(), folder / DATA_FILE).to_dict()


def dataset_source(source: str, published_path: str):
    """The MLflow dataset source: the remote URL for s3:// and https:// sources, else the published file."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    remote = source.startswith(("s3://", "https://", "http://"))
    with warnings.catch_warnings():  # a local path matches two equivalent source classes; either is right
        warnings.simplefilter("ignore")
        return resolve_dataset_source(source if remote else published_path)


def log_dataset(client, run_id: str, info: dict, name: str) -> None:
    """Log the dataset as an MLflow input with its DVC md5 as the digest."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    dataset = MetaDataset(source=dataset_source(info["source"], info["path"]), name=name, digest=info["md5"])
    tags = [InputTag(key="mlflow.data.context", value="training")]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])


@task(name="data", cache_policy=NO_CACHE)
def data(run_file: str) -> dict:
    """Stage 1: the training prompts, tracked as a nested MLflow run (params, digest, row count)."""
    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    client = tracking.client_for(run.tracking_uri)
    with tracking.stage_run(client, run.experiment_id, run.parent_run_id, "data", run.tags()) as run_id:
        info, cached = run_cached(download_data, run_file, output=lambda r: r["path"])
        tracking.log_params(client, run_id, {"source": data_source(run.recipe()), "path": info["path"]})
        tracking.log_metrics(client, run_id, {"rows": info["n_rows"]})
        tracking.set_tags(
            client, run_id, {"dataset.md5": info["md5"], "dataset.sha256": info["sha256"], "cached": cached}
        )
        log_dataset(client, run_id, info, f"{run.recipe().name}-train")
        log_dataset(client, run.parent_run_id, info, f"{run.recipe().name}-train")
        logger.info(
            "data: %d rows, md5 %s%s -> %s", info["n_rows"], info["md5"], " (cached)" if cached else "", info["path"]
        )
    return info
