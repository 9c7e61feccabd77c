"""Bad input, faults and signals as a user meets them (docs/cli-contract.md): one line, the right exit
code, and nothing written that was not asked for.

Exit codes: 0 success, 2 bad input, 130 interrupted, 1 only for a bug. Usage errors and signals are
tried through a subprocess of the real CLI; the rest through :func:`opdlm.cli.main.main`, which is the
console script's body.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import train_cmd

from opdlm.cli.main import main
from opdlm.train.folder import TrainingFolder

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
STAGES = "[{name: short, rollout_steps: 2, length: {start: 8, end: 8}}]"
FAST = [
    "train.prompts_per_rollout=4",
    "train.optimizer_steps_per_rollout=1",
    "train.micro_batch_size=2",
    "train.num_prompts=16",
    "train.checkpoint_every=1",
    f"train.stages={STAGES}",
]
LONG = [*FAST, "train.stages=[{name: long, rollout_steps: 500, length: {start: 8, end: 8}}]"]


def cli(*args, env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "opdlm.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        **kwargs,
    )


def one_error_line(err: str) -> str:
    """The single line a failing command prints (anything else on stderr is a failure of the contract)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- usage errors: typer's own exceptions, one line, exit 2 (issue 13, item 1) ---------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["convert", "--teacher", "x"], "Missing option '--out'"),  # missing option
        (["conver", "--teacher", "x"], "No such command 'conver'"),  # unknown command
        (["convert", "--teecher", "x", "--out", "y"], "No such option: --teecher"),  # misspelt option
        (
            ["convert", "--teacher", "x", "--out", "y", "--block-size", "four"],
            "Invalid value for '--block-size'",
        ),  # bad value
        (["train", "--config"], "requires an argument"),
        (["stage", "nope"], "No such command 'nope'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, needle, tmp_path):
    proc = cli(*args, cwd=tmp_path)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and line.startswith("error: ") and needle in line, proc.stderr
    assert proc.stdout == "" and not list(tmp_path.iterdir())


# --- signals: Ctrl-C and SIGTERM end with 130 and say where to resume --------------------------------


# SIGTERM takes the same path (main turns it into KeyboardInterrupt); slow: a second ~60 s training start-up
@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_interrupted_train_exits_130_and_says_how_to_resume(sig, tiny_teacher_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = train_cmd(out, tiny_teacher_dir, *LONG)
    # SIGINT back to its default in the child: a shell's background job (`make test &`, nohup) starts with
    # SIGINT ignored, Python then installs no KeyboardInterrupt handler, and Ctrl-C could never be tested
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 240
    while (
        time.monotonic() < deadline and proc.poll() is None and not list(TrainingFolder(out).checkpoints.glob("step-*"))
    ):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped after checkpoint step-") and "run the same command to resume" in last
    assert "Traceback" not in stderr
    assert stdout == ""  # --quiet: nothing on stdout, DeepSpeed's "Setting accelerator to CPU" notice included


# --- files that are not UTF-8 --------------------------------------------------------------------------


def test_non_utf8_files_are_one_line_errors(tiny_teacher_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id": "a", "question": "caf\xe9?", "answer": "1", "domain": "math"}\n')
    cases = [
        ["train", "--config", TINY, "--out", tmp_path / "o1", "--teacher", tiny_teacher_dir, "--data", bad, *FAST],
        ["stage", "data", "--recipe", TINY, "--out", tmp_path / "o2" / "data.jsonl", f"data.source={bad}", *FAST],
        ["score", "--benchmark", "synthetic", "--completions", bad],
    ]
    for args in cases:
        assert main([str(a) for a in args]) == 2, args
        line = one_error_line(capsys.readouterr().err)
        assert f"{bad}:1: not UTF-8 text (byte 0xe9" in line, line
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2" / "data.jsonl").exists()


# --- truncated weights -----------------------------------------------------------------------------------


@pytest.fixture
def truncated_teacher(tiny_teacher_dir, tmp_path) -> Path:
    bad = tmp_path / "bad-teacher"
    shutil.copytree(tiny_teacher_dir, bad)
    truncate(bad / "model.safetensors")
    return bad


def test_truncated_weights_are_refused_before_anything_is_written(
    truncated_teacher, tiny_student_dir, tmp_path, capsys
):
    bad_student = tmp_path / "bad-student"
    shutil.copytree(tiny_student_dir, bad_student)
    truncate(bad_student / "model.safetensors")
    cases = [
        (["convert", "--teacher", truncated_teacher, "--out", tmp_path / "c"], tmp_path / "c"),
        (["train", "--config", TINY, "--out", tmp_path / "t", "--teacher", truncated_teacher, *FAST], tmp_path / "t"),
        (["generate", "--model", bad_student, "--prompt", "1+1="], None),
    ]
    for args, out in cases:
        assert main([str(a) for a in args]) == 2, args
        line = one_error_line(capsys.readouterr().err)
        assert "model.safetensors are unreadable" in line and "truncated or corrupt" in line, line
        assert out is None or not out.exists()


def test_train_recovers_from_a_corrupt_converted_left_in_out(tiny_teacher_dir, truncated_teacher, tmp_path, capsys):
    """OUT/converted is derived from the teacher: one whose weights do not read back is converted again."""
    out = tmp_path / "run"
    TrainingFolder(out).converted.mkdir(parents=True)
    for p in truncated_teacher.iterdir():  # what an older version left: the bad teacher copied unread
        shutil.copy2(p, TrainingFolder(out).converted / p.name)
    args = ["train", "--config", str(TINY), "--out", str(out), "--teacher", str(tiny_teacher_dir), "--quiet", *FAST]
    assert main(args) == 0, capsys.readouterr().err
    assert TrainingFolder(out).summary_file.is_file()


def test_train_with_a_bad_teacher_leaves_an_existing_out_as_it_was(truncated_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert main(["train", "--config", str(TINY), "--out", str(out), "--teacher", str(truncated_teacher), *FAST]) == 2
    assert "unreadable" in one_error_line(capsys.readouterr().err)
    assert list(out.iterdir()) == []


# --- recipes must say what they train ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "has no train section"),
        ("name: x\nseed: 1\n", "has no train section"),
        ("train:\n  lr: 1.0e-4\n", "has no train.stages"),
    ],
)
def test_a_recipe_without_train_stages_is_refused(text, needle, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "o"), "--teacher", "x"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert needle in line and "a recipe must list what it trains" in line
    assert not (tmp_path / "o").exists()


# --- training on nothing -------------------------------------------------------------------------------------


def test_training_on_nothing_is_refused_before_out_is_made(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(
        [
            "train",
            "--config",
            str(TINY),
            "--out",
            str(out),
            "--teacher",
            str(tiny_teacher_dir),
            *FAST,
            "train.max_prompt_tokens=2",
        ]
    )
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no training prompt fits train.max_prompt_tokens (2): all 16 are longer" in line
    assert not out.exists()


def test_a_run_that_took_no_optimizer_step_fails_and_exports_nothing(tiny_teacher_dir, tmp_path, monkeypatch):
    """The run-level guard behind the up-front check: zero optimizer steps is never 'trained student'."""
    import opdlm.train.setup as setup
    from opdlm.config.recipe import load_recipe
    from opdlm.errors import OpdlmError
    from opdlm.train.loop import train

    monkeypatch.setattr(setup, "check_inputs", lambda *a: None)
    with pytest.raises(
        OpdlmError, match="the run took no optimizer step in its 2 rollout steps: 8 prompts were skipped"
    ):
        train(
            load_recipe(TINY, [*FAST, "train.max_prompt_tokens=2"]),
            tmp_path / "o",
            teacher=str(tiny_teacher_dir),
            console=False,
        )
    assert (
        not TrainingFolder(tmp_path / "o").summary_file.exists() and not (tmp_path / "o" / "model.safetensors").exists()
    )


# --- students that cannot work, and generate's options --------------------------------------------------------


def test_a_student_whose_mask_is_its_eos_is_refused(tiny_student_dir, tmp_path, capsys):
    bad = tmp_path / "s"
    shutil.copytree(tiny_student_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    eos = config["eos_token_id"][0] if isinstance(config["eos_token_id"], list) else config["eos_token_id"]
    (bad / "config.json").write_text(json.dumps({**config, "mask_token_id": eos}))
    assert main(["generate", "--model", str(bad), "--prompt", "1+1="]) == 2
    assert f"mask_token_id {eos} is also its EOS token" in one_error_line(capsys.readouterr().err)


def test_generate_checks_its_options_before_loading_the_model(tiny_student_dir, monkeypatch, capsys):
    import opdlm.models.student as student

    def never(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(student, "load_student", never)
    for flags, needle in [
        (["--threshold", "2"], "threshold"),
        (["--steps-per-block", "9"], "must be <= block_size"),
        (["--attn", "nope"], "unknown attention backend"),
        (["--device", "tpu9"], "device"),
    ]:
        assert main(["generate", "--model", str(tiny_student_dir), "--prompt", "x", *flags]) == 2
        assert needle in one_error_line(capsys.readouterr().err)


# --- an unreachable artifact store ----------------------------------------------------------------------------------


def test_pipeline_with_an_unreachable_s3_artifact_root_fails_at_once(tmp_path):
    """Checked before Prefect starts: one line, exit 2, in seconds, no run folder and no retries."""
    env = {
        "OPDLM_ARTIFACT_ROOT": "s3://opdlm-artifacts/mlflow",
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "OPDLM_RUNS_DIR": str(tmp_path / "runs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns.db",
    }
    start = time.monotonic()
    proc = cli("pipeline", "--recipe", TINY, env_extra=env)
    line = one_error_line(proc.stderr)
    assert (
        proc.returncode == 2
        and "artifact store s3://opdlm-artifacts/mlflow is not reachable at http://127.0.0.1:9" in line
    )
    assert time.monotonic() - start < 60 and not (tmp_path / "runs").exists()
