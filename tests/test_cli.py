"""The ``opdlm`` command line: convert and generate end to end, and one-line errors."""

import json
import subprocess
import sys

import pytest

from opdlm.cli.main import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "opdlm.cli.main", *map(str, args)], capture_output=True, text=True)


def test_convert_then_generate_json(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["convert", "--teacher", str(tiny_teacher_dir), "--out", str(out), "--block-size", "4"]) == 0
    assert "converted" in capsys.readouterr().out
    code = main(
        [
            "generate",
            "--model",
            str(out),
            "--prompt",
            "Hello",
            "--prompt",
            "1+1=",
            "--max-new-tokens",
            "8",
            "--threshold",
            "0.5",
            "--json",
        ]
    )
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2
    for rec in lines:
        assert {"text", "tokens_per_step", "num_forwards", "token_ids", "step_map"} <= rec.keys()
        assert len(rec["token_ids"]) == len(rec["step_map"]) <= 8 and rec["num_forwards"] >= 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["convert", "--teacher", "/nonexistent/dir", "--out", "{tmp}/o"],
            "teacher directory /nonexistent/dir does not exist",
        ),
        (
            ["convert", "--teacher", "{teacher}", "--out", "{tmp}/o", "--block-size", "0"],
            "block_size must be an integer >= 1",
        ),
        (["generate", "--model", "{teacher}", "--prompt", "x"], "is not a converted student"),
        (["generate", "--model", "{student}", "--prompt", "x", "--threshold", "2"], "threshold"),
        (["generate", "--model", "{student}", "--prompt", "x", "--steps-per-block", "9"], "must be <= block_size"),
    ],
)
def test_errors_are_one_line_and_nonzero(args, needle, tiny_teacher_dir, tiny_student_dir, tmp_path):
    args = [a.format(tmp=tmp_path, teacher=tiny_teacher_dir, student=tiny_student_dir) for a in args]
    proc = run_cli(*args)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and needle in err[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_train_refuses_a_student_with_another_prompt_geometry(tiny_teacher_dir, tmp_path, capsys):
    from pathlib import Path

    from opdlm.sources.convert import convert_teacher

    causal = convert_teacher(tiny_teacher_dir, tmp_path / "causal", block_size=4, prompt_attention="causal")
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    code = main(
        [
            "train",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--student",
            str(causal),
            "--teacher",
            str(tiny_teacher_dir),
            "convert.prompt_attention=block",
        ]
    )
    assert code == 2
    assert "prompt_attention=causal" in capsys.readouterr().err
