"""Pipeline building blocks without Prefect or MLflow servers: content keys, recipe lookup, metrics
replay, stage arithmetic, the bootstrap command and MLflow parameter flattening."""

import json
import subprocess
import sys

import pytest
import yaml

from opdlm.config.recipe import Recipe
from opdlm.errors import ConfigError, OpdlmError
from opdlm.pipeline import keys
from opdlm.pipeline.fingerprint import config_hash, model_dir_fingerprint
from opdlm.pipeline.recipes import resolve_recipe
from opdlm.pipeline.stages import stage_steps
from opdlm.pipeline.training_metrics import read_metric_steps
from opdlm.sources.builtin import bootstrap_command
from opdlm.train.folder import TrainingFolder


def _recipe(**changes) -> Recipe:
    data = {"train": {"stages": [{"name": "a", "rollout_steps": 3}, {"name": "b", "rollout_steps": 2}]}}
    data.update(changes)
    return Recipe.model_validate(data)


def test_config_hash_depends_on_values_not_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert config_hash(_recipe().train) == config_hash(_recipe().train.model_dump(mode="json"))


def test_model_fingerprint_follows_bytes_not_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"\x01" * 1000)
    (a / ".cache").mkdir()  # hidden folders (hub metadata) do not count
    assert model_dir_fingerprint(a) == model_dir_fingerprint(b)
    (b / "model.safetensors").write_bytes(b"\x02" * 1000)
    assert model_dir_fingerprint(a) != model_dir_fingerprint(b)


def test_data_key_is_content_keyed(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"question": "q", "answer": "a", "domain": "math", "source": "s"}\n')
    k1 = keys.data_key(_recipe(data={"source": str(f)}))
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_text(f.read_text())
    assert keys.data_key(_recipe(data={"source": str(moved)})) == k1  # same bytes elsewhere: same key
    f.write_text(f.read_text() + f.read_text())
    assert keys.data_key(_recipe(data={"source": str(f)})) != k1  # same path, new bytes: new key
    assert keys.data_key(_recipe(data={"source": "s3://bucket/rows.jsonl"})) is None  # remote: never cached
    assert keys.data_key(_recipe()) != keys.data_key(
        _recipe(train={"num_prompts": 10, "stages": [{"name": "a", "rollout_steps": 1}]})
    )


def test_train_key_changes_with_training_inputs_only():
    base = keys.train_key(_recipe(), "student", "md5", "teacher")
    assert keys.train_key(_recipe(eval={"limit": 5}), "student", "md5", "teacher") == base  # eval does not train
    assert keys.train_key(_recipe(registry={"min_retention": 0.5}), "student", "md5", "teacher") == base
    assert keys.train_key(_recipe(seed=1), "student", "md5", "teacher") != base
    assert keys.train_key(_recipe(), "student", "other-md5", "teacher") != base
    quiet = _recipe(teacher={"bootstrap": {"progress": False}})  # display only: the same run
    assert keys.train_key(quiet, "student", "md5", "teacher") == base
    assert keys.train_key(_recipe(teacher={"bootstrap": {"steps": 700}}), "student", "md5", "teacher") != base
    assert keys.teacher_key(_recipe()) == keys.teacher_key(_recipe(teacher={"bootstrap": {"progress": False}}))
    assert keys.teacher_key(_recipe(teacher={"source": "hf://Qwen/Qwen3-0.6B"})) is None


def test_stage_steps_and_progress(tmp_path):
    recipe = _recipe()
    assert stage_steps(recipe, "a") == (0, 3) and stage_steps(recipe, "b") == (3, 5)
    with pytest.raises(OpdlmError, match="no stage 'c'; stages: a, b"):
        stage_steps(recipe, "c")
    folder = TrainingFolder(tmp_path)
    assert folder.progress() == 0 and not folder.is_finished()
    folder.summary_file.write_text(json.dumps({"rollout_step": 3}))
    assert folder.progress() == 3 and not folder.is_finished()
    folder.summary_file.write_text(json.dumps({"rollout_step": 5, "total_rollout_steps": 5, "finished": True}))
    assert folder.is_finished() and folder.is_finished(5) and not folder.is_finished(6)
    folder.summary_file.write_text('{"rollout_st')  # being replaced: read as not there yet
    assert folder.progress() == 0 and folder.summary() == {}


def test_metrics_replay_skips_partial_lines_and_strings(tmp_path):
    f = TrainingFolder(tmp_path).metrics_file
    f.write_text(
        '{"step": 0, "loss": 1.5, "stage_name": "a", "grad_norm": NaN}\n'
        '{"step": 1, "loss": 1.0, "eos_rate": 1}\n{"step": 2, "lo'
    )
    assert read_metric_steps(f) == [(0, {"loss": 1.5}), (1, {"loss": 1.0, "eos_rate": 1.0})]
    assert read_metric_steps(f, after_step=0) == [(1, {"loss": 1.0, "eos_rate": 1.0})]
    assert read_metric_steps(tmp_path / "missing.jsonl") == []


def test_resolve_recipe_by_path_or_name(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text("name: tiny\n")
    assert resolve_recipe("tiny", configs) == configs / "tiny.yaml"
    assert resolve_recipe(configs / "tiny.yaml", configs) == configs / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"unknown recipe 'tinyy'.*known: tiny"):
        resolve_recipe("tinyy", configs)


def test_bootstrap_command_round_trips_every_setting(tmp_path):
    recipe = _recipe(teacher={"bootstrap": {"steps": 7, "warmup_steps": 1, "num_kv_heads": 2, "lr": 0.002}})
    cmd = bootstrap_command(recipe, tmp_path / "t", python="python")
    assert cmd[:7] == ["python", "-m", "opdlm.cli.main", "teacher", "bootstrap", "--out", str(tmp_path / "t")]
    from opdlm.config.base import apply_overrides, validate_config
    from opdlm.config.teacher import BootstrapConfig

    parsed = validate_config(BootstrapConfig, apply_overrides({}, [a for a in cmd if "=" in a]))
    assert parsed == recipe.teacher.bootstrap


def test_mlflow_params_are_flattened():
    from opdlm.pipeline.params import flatten

    flat = flatten(_recipe().model_dump(mode="json"))
    assert flat["train.stages.1.name"] == "b" and flat["train.stages.1.rollout_steps"] == 2
    assert flat["eval.benchmarks"] == ["synthetic"] and "registry.min_retention" in flat


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pipeline", "--recipe", "no-such-recipe"], "error: unknown recipe 'no-such-recipe'"),
        (
            ["pipeline", "--recipe", "configs/tiny.yaml", "train.lrr=1e-3"],
            "unknown key 'train.lrr'; did you mean 'lr'?",
        ),
        (["pipeline", "--recipe", "configs/tiny.yaml", "train.lr"], "must look like key=value"),
    ],
)
def test_pipeline_cli_rejects_bad_input_before_starting(args, message):
    proc = subprocess.run([sys.executable, "-m", "opdlm.cli.main", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert "prefect" not in proc.stderr.lower()  # failed before any orchestration started


def test_prefect_yaml_deploys_the_pipeline_flow():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {
        "opdlm-tiny",
        "opdlm-qwen3-0.6b",
        "opdlm-qwen3-1.7b",
        "opdlm-qwen3-4b",
        "opdlm-qwen3-8b",
    }
    tiny = deployments["opdlm-tiny"]
    assert tiny["work_pool"]["name"] == "opdlm-process" and tiny["schedules"][0]["cron"] == "0 3 * * 1"
    for name, d in deployments.items():
        assert d["entrypoint"] == "flows/pipeline.py:pipeline_flow"
        assert set(d["parameters"]) == {"recipe", "overrides"} and (root / d["parameters"]["recipe"]).is_file(), name
        if name != "opdlm-tiny":
            assert d["work_pool"]["name"] == "opdlm-gpu" and d["work_pool"]["job_variables"]["gpus"] >= 1
    tree = ast.parse((root / "flows" / "pipeline.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "pipeline_flow")
    assert [a.arg for a in fn.args.args] == ["recipe", "overrides"]
    assert any("opdlm-pipeline" in ast.unparse(d) for d in fn.decorator_list)


def test_flow_runs_start_named_after_the_recipe_file(monkeypatch):
    pytest.importorskip("prefect")
    import prefect.runtime.flow_run

    from tasks.flow_run import recipe_run_name

    monkeypatch.setattr(prefect.runtime.flow_run, "parameters", {"recipe": "configs/qwen3-4b.yaml"}, raising=False)
    assert recipe_run_name() == "qwen3-4b"


def test_tracked_metrics_put_key_curves_first_and_leave_stage_settings_out():
    from opdlm.pipeline.training_metrics import stage_constants, tracked_metrics

    line = {
        "grad_norm": 1.5,
        "loss": 0.07,
        "kl_by_block_position/0": 0.1,
        "block_size": 4.0,
        "optimizer_steps": 1.0,
        "rollouts": 4.0,
        "stage": 0.0,
        "tokens_per_step": 1.5,
        "eos_rate": 0.5,
    }
    tracked = tracked_metrics(line)
    assert list(tracked)[:2] == ["1_key/loss", "1_key/tokens_per_step"]
    assert tracked["train/grad_norm"] == 1.5 and tracked["kl_by_block_position/0"] == 0.1
    assert not any(k.endswith(("block_size", "optimizer_steps", "rollouts", "stage")) for k in tracked)
    assert sorted({k.split("/")[0] for k in tracked})[0] == "1_key"  # the section MLflow shows first
    assert stage_constants([(0, {"loss": 1.0}), (1, line)]) == {
        "stage": 0,
        "block_size": 4,
        "rollouts": 4,
        "optimizer_steps": 1,
    }


def test_student_stage_exports_only_a_finished_folder(tmp_path):
    from opdlm.pipeline.stages import student_stage

    folder = TrainingFolder(tmp_path / "train")
    with pytest.raises(OpdlmError, match=r"holds no finished training run \(it has no train_summary.json\)"):
        student_stage(folder.path, tmp_path / "student")
    folder.path.mkdir()
    folder.summary_file.write_text(json.dumps({"rollout_step": 2, "total_rollout_steps": 5, "finished": False}))
    with pytest.raises(OpdlmError, match="it stopped at rollout step 2 of 5"):
        student_stage(folder.path, tmp_path / "student")
    folder.summary_file.write_text(json.dumps({"rollout_step": 5, "total_rollout_steps": 5, "finished": True}))
    with pytest.raises(OpdlmError, match="it trained 5 rollout steps, not 6"):
        student_stage(folder.path, tmp_path / "student", total_rollout_steps=6)  # the recipe asks for more
    with pytest.raises(OpdlmError, match="has no checkpoint"):
        student_stage(folder.path, tmp_path / "student")
    assert not (tmp_path / "student").exists()
