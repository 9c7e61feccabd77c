"""Faults a user still tripped on (issue 26): each is one ``error:`` line, exit code 2, found before any work.

Checks that ran after expensive work (a study's ablation overrides, a recipe's files), a network call
without a deadline (``opdlm track`` against a dead server), tracebacks on bad input, settings that
cannot take effect, the error-line rule itself, the sweep plot and the lm-eval entry point.
"""

from __future__ import annotations

import json
import socket
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from opdlm.cli.main import main
from opdlm.config.recipe import load_recipe
from opdlm.errors import ConfigError, OpdlmError, SourceError, error_line, quote

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
STUDY = REPO / "configs" / "study.yaml"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[:2000]
    return lines[0]


# --- the error-line rule ------------------------------------------------------------------------------


def test_an_error_line_is_one_bounded_line_and_a_long_value_is_quoted_as_a_prefix():
    paste = '{"prompt": "x"}\n' * 100_000
    line = error_line(f"data.source: not a path (got {quote(paste)})")
    assert "\n" not in line and len(line) < 1000
    assert quote(paste).startswith(repr(paste[:60])) and "1,600,000 characters" in quote(paste)
    assert quote("short") == "'short'"
    long_message = "x" * 100_000
    assert len(error_line(long_message)) < 1000 and "more characters cut" in error_line(long_message)


def test_jsonl_rows_pasted_into_data_source_are_named_not_echoed(tmp_path, capsys):
    recipe = yaml.safe_load(TINY.read_text())
    recipe["data"] = {"source": '{"prompt": "What is 1+1?", "answer": "2"}\n' * 5_000}  # 210 kB
    path = tmp_path / "pasted.yaml"
    path.write_text(yaml.safe_dump(recipe, width=10**9))
    assert main(["stage", "data", "--recipe", str(path), "--out", str(tmp_path / "d.jsonl")]) == 2
    line = one_error_line(capsys)
    assert "data.source" in line and "pasted" in line and len(line) < 1000
    assert not (tmp_path / "d.jsonl").exists()


# --- a study checks every arm's recipe before anything starts -------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("[train.state_selection=all_rounds]", "[train.state_selecton=all_rounds]", "study.ablations 'all_rounds'"),
        ("- train.exclude_eos_from_loss=false", "- train.exclude_eos_from_los=false", "study.baseline_overrides"),
    ],
)
def test_a_study_override_typo_fails_before_prefect_and_writes_nothing(tmp_path, capsys, old, new, where):
    text = STUDY.read_text()
    assert old in text
    study = tmp_path / "study.yaml"
    study.write_text(text.replace(old, new))
    out = tmp_path / "out"
    assert main(["study", "--recipe", str(study), "--quick", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert where in line and "unknown key" in line and "did you mean" in line
    assert not out.exists()


# --- files a recipe names are checked when it loads -----------------------------------------------------


def test_launch_dry_run_refuses_a_deepspeed_file_that_does_not_exist(tmp_path, capsys):
    args = ["launch", "--dry-run", "--config", str(TINY), "--out", str(tmp_path / "run")]
    assert main([*args, "train.deepspeed=configs/deepspeed/zero9.json"]) == 2
    line = one_error_line(capsys)
    assert "train.deepspeed" in line and "zero9.json" in line and "no such file" in line
    broken = tmp_path / "ds.json"
    broken.write_text('{"zero_optimization": ')
    assert main([*args, f"train.deepspeed={broken}"]) == 2
    assert "not valid JSON" in one_error_line(capsys)
    assert main([*args, "train.deepspeed=configs/deepspeed/zero2.json"]) == 0  # a real one still passes
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "field", "extra"),
    [
        ("teacher.source={missing}", "teacher.source", []),
        ("teacher.path={missing}", "teacher.path", []),
        ("convert.student_source={missing}", "convert.student_source", []),
        ("data.path={missing}", "data.path", []),
        (
            "train.teacher_deepspeed={missing}",
            "train.teacher_deepspeed",
            ["train.deepspeed=configs/deepspeed/zero3.json", "train.teacher_offload=true"],
        ),
        ("eval.lm_eval_include_path={missing}", "eval.lm_eval_include_path", ["eval.lm_eval_tasks=[x]"]),
    ],
)
def test_every_file_a_recipe_names_must_exist(tmp_path, override, field, extra):
    if "lm_eval" in field:
        pytest.importorskip("lm_eval")
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=rf"{field}: no such (file|directory)"):
        load_recipe(TINY, [override.format(missing=missing), *extra])


def test_a_multi_node_hostfile_must_exist(tmp_path):
    base = ["train.deepspeed=configs/deepspeed/zero2.json", "resources.nodes=2", "resources.gpus_per_node=8"]
    with pytest.raises(ConfigError, match="resources.hostfile: no such file"):
        load_recipe(TINY, [*base, f"resources.hostfile={tmp_path / 'hosts'}"])
    (tmp_path / "hosts").write_text("a slots=8\nb slots=8\n")
    assert load_recipe(TINY, [*base, f"resources.hostfile={tmp_path / 'hosts'}"]).resources.hostfile


# --- settings that cannot take effect -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["train.future_aware.top_k=8"], "future_aware is set but target is 'causal'"),
        (["train.kl_top_k=8"], "kl_top_k (8) is set but kl is 'full'"),
        (["train.mdm_min_mask_ratio=0.2"], "mdm_min_mask_ratio (0.2) only applies to objective mdm_sft"),
        (["train.rollout.remasking=static", "train.rollout.threshold=0.8"], "rollout.threshold (0.8) is set but"),
        (["train.rollout.remasking=static", "train.stages.0.threshold=0.8"], "threshold is set but rollout.remasking"),
        (["train.rollout.temperature=0", "train.rollout.top_p=0.9"], "rollout.top_p (0.9) is set but"),
        (["teacher.source=hf://Qwen/Qwen3-0.6B", "teacher.bootstrap.steps=500"], "teacher.bootstrap is set"),
        (["data.field_map={answer: solution}"], "data.field_map is set"),
        (["resources.hostfile=configs/tiny.yaml"], "resources.hostfile is set but the launcher is 'python'"),
        ([f"eval.lm_eval_include_path={REPO}"], "eval.lm_eval_include_path is set but eval.lm_eval_tasks is empty"),
    ],
)
def test_a_setting_that_cannot_take_effect_is_an_error(overrides, says):
    with pytest.raises(ConfigError) as caught:
        load_recipe(TINY, overrides)
    assert says in str(caught.value)


def test_the_settings_each_one_needs_make_them_valid():
    recipe = load_recipe(TINY, ["train.target=future_aware", "train.future_aware.top_k=8"])
    assert recipe.train.future_aware.top_k == 8
    assert load_recipe(TINY, ["train.kl=top_k", "train.kl_top_k=8"]).train.kl_top_k == 8
    # a recipe dumped in full and read back names every default: that is no user's request
    again = load_recipe(TINY)
    assert type(again).model_validate(again.model_dump(mode="json")) == again


# --- tracebacks that are now one line -------------------------------------------------------------------


def test_an_a2d_config_with_a_count_written_as_text_is_one_line():
    from opdlm.formats.common import require_fields

    raw = {
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": "1",
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128,
    }
    with pytest.raises(SourceError, match=r"a2d/config.json: num_hidden_layers must be a positive integer, got '1'"):
        require_fields(raw, "a2d/config.json")
    require_fields({**raw, "num_hidden_layers": 1}, "a2d/config.json")


def test_an_unknown_lm_eval_task_names_its_close_match():
    from opdlm.lmeval.cli import unknown_task_message

    known = ["gsm8k", "gsm8k_cot", "arc_easy", "hellaswag"]
    assert (
        unknown_task_message("gsm8K", known, "--tasks")
        == "--tasks: unknown lm-eval task 'gsm8K'; did you mean 'gsm8k'?"
    )
    assert "did you mean 'hellaswag'" in unknown_task_message("helaswag", known, "eval.lm_eval_tasks")
    assert "lm-eval ls tasks" in unknown_task_message("zzz", known, "--tasks")


# lm-eval indexes its whole task tree (thousands of YAMLs) once to run and once to suggest: ~30 s
@pytest.mark.slow
def test_opdlm_lm_eval_with_a_task_typo_is_one_line(capsys):
    pytest.importorskip("lm_eval")
    assert main(["lm-eval", "--model", "opdlm", "--model_args", "pretrained=/nowhere", "--tasks", "gsm8K"]) == 2
    assert one_error_line(capsys) == "error: --tasks: unknown lm-eval task 'gsm8K'; did you mean 'gsm8k'?"


# --- opdlm track: a bounded wait for the tracking server, one line ---------------------------------------


@pytest.fixture
def train_dir(tmp_path) -> Path:
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "length_cap": 16}) + "\n")
    return folder


@pytest.fixture
def silent_server():
    """A socket that accepts connections and never answers (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def refused_uri() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_track_against_a_dead_server_ends_with_one_line(train_dir, capsys, monkeypatch, request, server):
    import time

    uri = refused_uri() if server == "refused" else request.getfixturevalue("silent_server")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # the user's settings win over the bounded defaults
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    started = time.monotonic()
    assert main(["track", "--train-dir", str(train_dir), "--run-id", "abc", "--tracking-uri", uri]) == 2
    assert time.monotonic() - started < 30
    line = one_error_line(capsys)
    assert f"MLflow tracking server {uri} did not answer" in line and "2 tries" in line
    assert ("connection refused" if server == "refused" else "no reply within 1 s") in line
    assert str(train_dir / "metrics.jsonl") in line


def test_the_bounded_mlflow_settings_apply_only_inside_the_block(monkeypatch):
    from opdlm.pipeline.training_metrics import TRACKING_HTTP_LIMITS, bounded_mlflow_requests

    for key in TRACKING_HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    import os

    with bounded_mlflow_requests():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == TRACKING_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


def test_track_on_metrics_that_are_not_utf8_is_one_line(train_dir, tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t", artifact_location=tmp_path.as_uri())).info.run_id
    metrics = train_dir / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 2, "stage_name": "\xff\xfe"}\n')
    capsys.readouterr()  # MLflow's notes on creating its store
    assert main(["track", "--train-dir", str(train_dir), "--run-id", run_id, "--tracking-uri", uri]) == 2
    assert one_error_line(capsys) == f"error: {metrics}:2: not UTF-8 text (byte 0xff); " + (
        "the trainer writes UTF-8 JSON lines, so the file was changed by something else"
    )


def test_a_character_cut_mid_write_in_the_last_line_waits_for_the_next_read(tmp_path):
    from opdlm.pipeline.training_metrics import read_metric_steps

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 0.5}\n{"step": 2, "stage_name": "\xc3')  # half of "é"
    assert [s for s, _ in read_metric_steps(path)] == [1]
    path.write_bytes(path.read_bytes() + b'\xa9", "loss": 0.25}\n')
    assert [s for s, _ in read_metric_steps(path)] == [1, 2]
    path.write_bytes(b'{"step": 1, "x": "\xff"}\n{"step": 2}\n')
    with pytest.raises(OpdlmError, match=r"metrics.jsonl:1: not UTF-8 text"):
        read_metric_steps(path)


# --- the sweep plot -------------------------------------------------------------------------------------


def test_the_sweep_plot_names_the_model_and_gets_the_teacher_and_the_shipped_point(tmp_path):
    from dataclasses import asdict

    from opdlm.eval.sweep import PLOT_FILE, TABLE_FILE, SweepPoint, model_label, sweep_title
    from opdlm.pipeline.plots import draw_sweep_plots

    assert model_label("runs/tiny/step-000110") == "tiny/step-000110"
    assert model_label("/models/opdlm-tiny") == "opdlm-tiny"
    bench = tmp_path / "sweep" / "synthetic"
    bench.mkdir(parents=True)
    points = [
        SweepPoint(4, t, a, s, 3.0, 10.0, 40.0, 8, p) for t, a, s, p in ((1.0, 0.9, 1.0, True), (0.8, 0.7, 2.5, True))
    ]
    (bench / TABLE_FILE).write_text(
        json.dumps({"benchmark": "synthetic", "n": 8, "points": [asdict(p) for p in points]})
    )
    recipe = load_recipe(TINY)
    student = {"synthetic": {"accuracy": 0.85, "tokens_per_step": 1.9, "n": 8}}
    teacher = {"synthetic": {"accuracy": 0.95, "tokens_per_step": 1.0}}
    written = draw_sweep_plots(recipe, tmp_path / "sweep", student, teacher, tmp_path / "plots")
    assert written == [tmp_path / "plots" / "synthetic"]
    copy = tmp_path / "plots" / "synthetic" / PLOT_FILE
    assert copy.read_bytes() == (bench / PLOT_FILE).read_bytes() and copy.read_bytes()[:4] == b"\x89PNG"
    assert sweep_title("opdlm-tiny", "synthetic", 8) == "opdlm-tiny on synthetic (8 rows): accuracy vs parallelism"


# --- lm-evaluation-harness entry point ------------------------------------------------------------------


def test_lm_eval_finds_the_model_type_through_the_declared_entry_point():
    pytest.importorskip("lm_eval")
    import importlib

    from lm_eval.api.model import LM
    from lm_eval.api.registry import get_model

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lm_eval.models"]
    ((name, target),) = declared.items()
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    from opdlm.lmeval import MODEL_NAME

    assert name == MODEL_NAME and issubclass(cls, LM) and get_model(name) is cls


# --- what a run needs at its end, and the servers it talks to, are checked before it starts ------------


def test_a_pipeline_whose_benchmark_file_is_missing_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "--recipe", str(TINY), "eval.benchmarks=[synthetic,gsm8k]"]) == 2
    line = one_error_line(capsys)
    assert "eval.benchmarks: benchmark gsm8k: data file not found" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("server", ["mlflow", "prefect"])
def test_a_pipeline_whose_servers_do_not_answer_fails_before_training(tmp_path, capsys, monkeypatch, server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    if server == "mlflow":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", refused_uri())
    else:
        monkeypatch.setenv("PREFECT_API_URL", refused_uri() + "/api")
    assert main(["pipeline", "--recipe", str(TINY)]) == 2
    line = one_error_line(capsys)
    assert ("MLflow tracking server" if server == "mlflow" else "Prefect API") in line
    assert "does not answer: connection refused" in line
    assert list(tmp_path.iterdir()) == []
