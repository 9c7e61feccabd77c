"""The one tracking channel: rank 0's ``metrics.jsonl`` replayed into MLflow, each step exactly once.

The replay (:class:`opdlm.pipeline.training_metrics.MetricReplay`) is what the pipeline's training
task calls while its subprocess runs and once after, and what ``opdlm track`` runs after a SLURM job;
here it is fed a hand-written file, the CLI, and a real two-rank torchrun run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from opdlm.cli.main import main
from opdlm.pipeline.training_metrics import STEP_MARKER, MetricReplay
from opdlm.train.folder import TrainingFolder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mlflow_client(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("replay", artifact_location=(tmp_path / "art").as_uri())
    return client, uri, experiment


def _line(step: int, **extra) -> str:
    return json.dumps({"step": step, "loss": 1.0 / (step + 1), "length_cap": 8, "stage_name": "a", **extra}) + "\n"


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_replay_logs_each_step_once_across_calls_and_replays(mlflow_client, tmp_path):
    client, _, experiment = mlflow_client
    stage_run = client.create_run(experiment).info.run_id
    parent = client.create_run(experiment).info.run_id
    folder = TrainingFolder(tmp_path / "train")
    folder.path.mkdir()
    folder.metrics_file.write_text(_line(0) + _line(1) + _line(2) + '{"step": 3, "lo')  # the trainer mid-write
    replay = MetricReplay(client, [stage_run, parent], folder.metrics_file, range(1, 4))
    assert replay() == [1, 2]  # step 0 belongs to an earlier stage; step 3 is not complete yet
    assert replay() == []
    folder.metrics_file.write_text(_line(0) + _line(1) + _line(2) + _line(3))
    assert replay() == [3]
    # a new replay (a retried task, `opdlm track` after the job) reads what the runs hold: nothing twice
    assert MetricReplay(client, [stage_run, parent], folder.metrics_file, range(1, 4))() == []
    assert MetricReplay(client, [parent], folder.metrics_file)() == [0]
    for key in ("1_key/loss", STEP_MARKER):
        assert _steps(client, stage_run, key) == [1, 2, 3]
        assert sorted(_steps(client, parent, key)) == [0, 1, 2, 3]
    assert "train/stage_name" not in client.get_run(parent).data.metrics  # strings are not metrics


def test_opdlm_track_replays_a_folder_and_fails_in_one_line(mlflow_client, tmp_path, capsys):
    client, uri, experiment = mlflow_client
    run_id = client.create_run(experiment).info.run_id
    folder = TrainingFolder(tmp_path / "train")
    folder.path.mkdir()
    folder.metrics_file.write_text(_line(0) + _line(1))
    args = ["track", "--train-dir", str(folder.path), "--run-id", run_id, "--tracking-uri", uri]
    assert main(args) == 0
    assert "2 step(s) (steps 0..1)" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 step(s)" in capsys.readouterr().out and _steps(client, run_id, "1_key/loss") == [0, 1]

    assert main([*args[:-4], "--run-id", "nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MLflow run 'nope' not found") and "\n" not in err
    assert main(["track", "--train-dir", str(tmp_path / "empty"), "--run-id", run_id, "--tracking-uri", uri]) == 2
    assert "is no opdlm training folder or trained no step yet" in capsys.readouterr().err


@pytest.mark.slow  # two torchrun ranks each import torch and transformers and load the models: 25-45 s on 2 cores
def test_two_rank_torchrun_metrics_arrive_in_mlflow_once_each(tiny_teacher_dir, mlflow_client, tmp_path):
    """The pipeline's path for every launcher: rank 0's metrics.jsonl streamed while torchrun runs, then
    replayed again (as `opdlm track` after a SLURM job): every step lands exactly once."""
    from opdlm.config.resources import ResourcesConfig
    from opdlm.train.launch import training_command, training_env
    from tasks.process import run_streaming

    client, uri, experiment = mlflow_client
    run_id = client.create_run(experiment).info.run_id
    steps = 3
    overrides = [
        "train.device=cpu",
        "train.num_threads=1",
        "train.prompts_per_rollout=2",
        "train.optimizer_steps_per_rollout=1",
        "train.micro_batch_size=1",
        "train.warmup_rollout_steps=0",
        "train.rollout.max_new_tokens=4",
        f"train.stages=[{{name: only, rollout_steps: {steps}, length: {{start: 4, end: 4, ramp_steps: 1}}}}]",
    ]
    resources = ResourcesConfig(processes_per_node=2)
    folder = TrainingFolder(tmp_path / "out")
    argv = training_command(
        ROOT / "configs" / "tiny.yaml",
        folder.path,
        resources=resources,
        teacher=str(tiny_teacher_dir),
        overrides=overrides,
    )
    assert argv[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node" in argv
    env = {**training_env(os.environ, resources=resources), "PYTHONPATH": os.pathsep.join(sys.path)}
    polls: list[list[int]] = []
    replay = MetricReplay(client, [run_id], folder.metrics_file, range(steps))
    run_streaming(argv, env, logging.getLogger("test"), name="torchrun", on_poll=lambda: polls.append(replay()))
    assert sorted(s for p in polls for s in p) == list(range(steps))
    assert folder.is_finished(steps)
    assert [json.loads(ln)["step"] for ln in folder.metrics_file.read_text().splitlines()] == list(range(steps))
    assert main(["track", "--train-dir", str(folder.path), "--run-id", run_id, "--tracking-uri", uri]) == 0
    metrics = client.get_run(run_id).data.metrics
    every_step = {"1_key/loss", "1_key/tokens_per_step", STEP_MARKER, "train/rollout_tokens", "train/eos_rate"}
    assert every_step <= set(metrics)
    for key in metrics:  # some (kl_by_block_position/3) exist only where a rollout reached that block
        counts = Counter(_steps(client, run_id, key))
        assert set(counts) <= set(range(steps)) and set(counts.values()) == {1}, (key, counts)
        assert key not in every_step or sorted(counts) == list(range(steps)), (key, counts)
