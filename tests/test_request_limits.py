"""Request limits and bounded settings: every request, option and recipe number is checked before any work.

The served model, ``opdlm generate`` and ``opdlm eval`` share one request model
(:mod:`opdlm.config.request`) whose limits come from the model's own ``config.json`` and tokenizer;
``tests/test_serving.py`` posts the same bad requests to a real ``mlflow models serve``. Also here:
numeric settings without a sane bound (the class behind an unbounded ``max_new_tokens``), the one
rounding rule for figures people read, transformers' progress bar under ``OPDLM_PROGRESS``, the
generate help text, and the one serve command every summary prints.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from opdlm.cli.main import main
from opdlm.config.request import SEED_MAX, ModelLimits, check_prompt_tokens, validate_request
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import ConfigError

DEFAULTS = SamplerConfig(max_new_tokens=64, block_size=4, denoise_steps_per_block=4)
LIMITS = ModelLimits(positions=512, max_token_chars=8)


def served_name(field: str) -> str:
    return "inputs: prompt" if field == "prompt" else f"params: {field}"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"max_new_tokens": 1_000_000}, "params: max_new_tokens: 1,000,000 new tokens do not fit the model's 512"),
        ({"max_new_tokens": 509}, "at most 508 with a one-token prompt"),  # 509 -> 512 positions in blocks of 4
        ({"seed": 2**64}, "params: seed: Input should be less than or equal to 18446744073709551615"),
        ({"seed": -1}, "params: seed: Input should be greater than or equal to 0"),
        ({"prompt": [None]}, "inputs: prompt[0]: Input should be a valid string (got None)"),
        ({"prompt": [3]}, "inputs: prompt[0]: Input should be a valid string"),
        ({"prompt": []}, "inputs: prompt: List should have at least 1 item"),
        ({"prompt": ["  "]}, "inputs: prompt[0]: an empty prompt"),
        ({"prompt": ["x"] * 65}, "inputs: prompt: 65 prompts in one request; at most 64"),
        ({"prompt": ["x" * 5000]}, "inputs: prompt[0]: 5,000 characters cannot fit the model's 512 positions"),
        ({"threshold": 5.0}, "params: threshold: Input should be less than or equal to 1 (got 5.0)"),
        ({"threshold": 0.0}, "params: threshold: Input should be greater than 0"),
        ({"temperature": -0.5}, "params: temperature: Input should be greater than or equal to 0"),
        ({"temperature": math.inf}, "params: temperature: Input should be a finite number"),
        ({"top_k": -1}, "params: top_k: Input should be greater than or equal to 0"),
        ({"top_p": 0.0}, "params: top_p: Input should be greater than 0"),
        ({"top_p": math.nan}, "params: top_p: Input should be a finite number"),
        ({"max_new_tokens": 0}, "params: max_new_tokens: Input should be greater than or equal to 1"),
        ({"raw_prompt": "yes"}, "params: raw_prompt: Input should be a valid boolean"),
        ({"block_size": 0}, "params: block_size: Input should be greater than or equal to 1"),
        ({"nonsense": 1}, "params: nonsense: unknown setting"),
    ],
)
def test_bad_request_is_one_line_naming_the_field(data, needle):
    with pytest.raises(ConfigError) as err:
        validate_request({"prompt": ["Compute 1+2."], **data}, DEFAULTS, LIMITS, name=served_name, source="params")
    message = str(err.value)
    assert needle in message and "\n" not in message and len(message) < 300


def test_a_good_request_keeps_the_model_defaults_and_the_full_seed_range():
    request, cfg = validate_request({"prompt": ["a"], "seed": SEED_MAX, "threshold": 0.5}, DEFAULTS, LIMITS)
    assert request.seed == SEED_MAX and cfg.threshold == 0.5 and cfg.max_new_tokens == 64
    _, cfg = validate_request({"prompt": ["a"], "max_new_tokens": 508}, DEFAULTS, LIMITS)  # the largest that fits
    assert cfg.max_new_tokens == 508


def test_prompt_plus_response_must_fit_the_positions():
    check_prompt_tokens([[1] * 448, [1] * 3], DEFAULTS, LIMITS)  # 448 + 64 = 512: fits exactly
    with pytest.raises(ConfigError, match=r"prompt\[1\]: 449 prompt tokens .* exceed the model's 512 positions"):
        check_prompt_tokens([[1] * 3, [1] * 449], DEFAULTS, LIMITS)
    with pytest.raises(ConfigError, match="at most 60 new tokens fit it"):
        check_prompt_tokens([[1] * 449], DEFAULTS, LIMITS)
    with pytest.raises(ConfigError, match="encodes to zero tokens"):
        check_prompt_tokens([[]], DEFAULTS, LIMITS)
    causal = ModelLimits(positions=512, block_causal=False)  # a teacher: no whole blocks
    check_prompt_tokens([[1] * 448], DEFAULTS.with_overrides(max_new_tokens=64), causal)


def test_limits_are_read_from_the_model(tiny_student_dir, tiny_teacher_dir):
    from transformers import AutoTokenizer

    from opdlm.models.student import model_limits

    positions = json.loads((tiny_student_dir / "config.json").read_text())["max_position_embeddings"]
    tok = AutoTokenizer.from_pretrained(tiny_student_dir)
    limits = model_limits(tiny_student_dir, tok)
    assert limits.positions == positions and limits.block_causal
    assert limits.max_token_chars == max(len(t) for t in tok.get_vocab())
    assert not model_limits(tiny_teacher_dir).block_causal


# ---- the CLI takes the same limits: one error line, exit 2, before the model loads ----


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-new-tokens", "1000000"], "error: --max-new-tokens: 1,000,000 new tokens do not fit the model's 1,024"),
        (["--seed", str(2**64)], "error: --seed: Input should be less than or equal to 18446744073709551615"),
        (["--threshold", "nan"], "error: --threshold: Input should be a finite number"),
        (["--steps-per-block", "0"], "error: --steps-per-block: Input should be greater than or equal to 1"),
        (["--top-k", "-3"], "error: --top-k: Input should be greater than or equal to 0"),
        (["--remasking", "sometimes"], "error: Invalid value for '--remasking'"),
        (["--prompt", "   "], "error: --prompt[1]: an empty prompt"),
        # a character tokenizer: 1,000 characters are 1,000+ tokens, which with 256 new ones exceed 1,024
        (["--prompt", "x" * 1000], "error: --prompt[1]: 1,0"),
    ],
)
def test_generate_refuses_with_one_line(tiny_student_dir, capsys, args, needle):
    code = main(["generate", "--model", str(tiny_student_dir), "--prompt", "Compute 1+2.", *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and len(err) < 400


def test_generate_refuses_too_many_prompts(tiny_student_dir, capsys):
    args = ["generate", "--model", str(tiny_student_dir)] + ["--prompt", "a"] * 65
    assert main(args) == 2 and "error: --prompt: 65 prompts in one request; at most 64" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-new-tokens", "5000"], "error: --max-new-tokens: 5,000 new tokens do not fit the model's 1,024"),
        (["--seed", "-1"], "seed: Input should be greater than or equal to 0"),
        (["--batch-size", "0"], "batch_size: Input should be greater than or equal to 1"),
    ],
)
def test_eval_refuses_before_loading(tiny_student_dir, tmp_path, capsys, args, needle):
    code = main(["eval", "--model", str(tiny_student_dir), "--benchmark", "synthetic", "--limit", "2", *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_eval_checks_every_prompt_against_the_positions_before_decoding(tiny_student_dir):
    from opdlm.config.eval import EvalConfig
    from opdlm.eval.harness import evaluate

    # 1,000 new tokens leave 24 positions (1,024 - 1,000): no chat-templated suite prompt fits
    with pytest.raises(ConfigError, match=r"synthetic row .*: \d+ prompt tokens .* exceed the model's 1,024 positions"):
        evaluate(tiny_student_dir, "synthetic", EvalConfig(limit=2, max_new_tokens=1000, device="cpu"))


# ---- the class: numeric settings without a sane bound ----


def _bounded_settings():
    from opdlm.config.eval import EvalConfig
    from opdlm.config.recipe import ConvertConfig, Recipe
    from opdlm.config.teacher import BootstrapConfig
    from opdlm.config.train import TrainConfig
    from opdlm.study.config import StudyConfig

    study = {"budgets": [100]}
    return [
        (EvalConfig, {"seed": -1}, "seed"),
        (EvalConfig, {"seed": 2**64}, "seed"),
        (EvalConfig, {"code_timeout_s": math.inf}, "code_timeout_s"),
        (Recipe, {"name": "x", "seed": 2**32}, "seed"),
        (TrainConfig, {"seed": -5}, "seed"),
        (TrainConfig, {"adam_betas": [0.9, 1.0]}, "adam_betas.1"),
        (TrainConfig, {"lr": math.inf}, "lr"),
        (TrainConfig, {"grad_clip": math.nan}, "grad_clip"),
        (BootstrapConfig, {"seed": -1}, "seed"),
        (BootstrapConfig, {"max_new_tokens": 1000}, "max_new_tokens"),
        (SamplerConfig, {"temperature": math.inf}, "temperature"),
        (ConvertConfig, {"block_size": 0}, "block_size"),
        (StudyConfig, {**study, "seeds": [-1]}, "seeds.0"),
        (StudyConfig, {**study, "ablation_seeds": [2**40]}, "ablation_seeds.0"),
    ]


@pytest.mark.parametrize(("cls", "data", "field"), _bounded_settings(), ids=lambda v: getattr(v, "__name__", None))
def test_unbounded_numbers_are_refused_naming_the_field(cls, data, field):
    from opdlm.config.base import validate_config

    with pytest.raises(ConfigError) as err:
        validate_config(cls, data, source="recipe.yaml")
    assert f"recipe.yaml: {field}:" in str(err.value)


def test_every_numeric_setting_has_a_lower_bound():
    """A count, size or rate below its floor (negative, zero) must fail when the recipe loads."""
    import types
    import typing

    import annotated_types as at

    from opdlm.config import eval, recipe, registry, resources, sampler, teacher, train  # noqa: A004
    from opdlm.config.base import StrictModel
    from opdlm.study import config as study

    unbounded = []
    for module in (eval, recipe, registry, resources, sampler, teacher, train, study):
        for cls in vars(module).values():
            if not (isinstance(cls, type) and issubclass(cls, StrictModel) and cls.__module__ == module.__name__):
                continue
            for name, field in cls.model_fields.items():
                ann = field.annotation  # a scalar or an optional scalar; lists have their own validators
                kinds = typing.get_args(ann) if isinstance(ann, types.UnionType) else (ann,)
                if not any(k in (int, float) for k in kinds):
                    continue
                if not any(isinstance(m, at.Ge | at.Gt) for m in field.metadata):
                    unbounded.append(f"{cls.__name__}.{name}")
    assert not unbounded, f"numeric settings with no lower bound: {unbounded}"


# ---- one rounding rule, bars, help text, the serve command ----


def test_figures_are_rounded_one_way():
    from opdlm.numbers import rounded_rate, show_count, show_fraction, show_rate

    assert (show_fraction(0.9545454), show_rate(2.3333), show_count(1234567)) == ("0.9545", "2.33", "1,234,567")
    assert show_fraction(None) == show_rate(None) == show_count(None) == "n/a"
    assert rounded_rate(1.857142857) == 1.86


def test_transformers_bars_follow_the_progress_policy(monkeypatch):
    from transformers.utils import logging as hf_logging

    from opdlm.progress import library_bars

    assert hf_logging.is_progress_bar_enabled()
    monkeypatch.setenv("OPDLM_PROGRESS", "lines")
    with library_bars():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()  # put back
    monkeypatch.setenv("OPDLM_PROGRESS", "bar")
    with library_bars():
        assert hf_logging.is_progress_bar_enabled()


def test_generate_in_a_pipe_prints_no_loading_bar_and_rounds_its_rate(tiny_student_dir, capsys, monkeypatch):
    monkeypatch.delenv("OPDLM_PROGRESS", raising=False)  # the default policy: stderr is captured, not a terminal
    args = ["generate", "--model", str(tiny_student_dir), "--prompt", "1+1=", "--max-new-tokens", "8"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "\r" not in err
    stats = err.strip().splitlines()[-1]
    rate = stats.split(" tokens/step")[0].split(", ")[-1]
    assert len(rate.split(".")[1]) == 2, stats


def test_generate_help_reads_as_plain_text():
    proc = subprocess.run(
        [sys.executable, "-m", "opdlm.cli.main", "generate", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "TERM": "dumb"},
    )
    help_text = proc.stdout
    assert proc.returncode == 0 and "`" not in help_text  # no RST ``literal`` markup
    assert "knows only the synthetic suite" in " ".join(help_text.split())
    assert "static|dynamic" in help_text  # --remasking is a choice
    device_line = next(line for line in help_text.splitlines() if "--device" in line)
    assert "cpu" in device_line  # --device has help


def test_every_printed_serve_command_is_the_one_function():
    from opdlm.pipeline.model_card import ModelCardFacts, render_model_card
    from opdlm.pipeline.serving import serve_command

    facts = dict(
        model_name="opdlm-tiny",
        teacher="builtin:tiny",
        teacher_fingerprint="f",
        data_source="builtin:synthetic",
        data_digest="d",
        data_rows=1,
        code_version="c",
        training_tokens=1,
        rollout_steps=1,
        flops=1.0,
        sampler_defaults={},
        scores={},
        gate="g",
    )
    for promoted, alias in ((True, "champion"), (False, "candidate")):
        card = render_model_card(ModelCardFacts(**facts, promoted=promoted))
        command = serve_command("opdlm-tiny", alias)
        assert f"`{command}`" in card and "--env-manager local" in command and "activated venv" in card
    line = serve_command("m", "candidate", tracking_uri="sqlite:////r/mlruns.db", venv_bin="/v/bin", port=7)
    assert line == (
        'PATH=/v/bin:"$PATH" MLFLOW_TRACKING_URI=sqlite:////r/mlruns.db '
        "mlflow models serve -m models:/m@candidate --env-manager local -p 7"
    )


def test_summary_prints_the_serve_line_the_serving_test_runs(tmp_path):
    """summary.md (also the Prefect artifact and the run's MLflow note) names the alias the version holds."""
    from types import SimpleNamespace

    pytest.importorskip("prefect")
    from opdlm.pipeline.serving import serve_command
    from tasks.report import render_summary

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train_summary.json").write_text(json.dumps({"cumulative_train_tokens": 1234567}))
    run = SimpleNamespace(
        tracking_uri=f"sqlite:///{tmp_path}/mlruns.db",
        experiment_id="1",
        parent_run_id="r1",
        flow_run_id=None,
        run_dir=str(tmp_path),
        recipe_source="configs/tiny.yaml",
        overrides=[],
    )
    metrics = {
        "synthetic": {
            "student_accuracy": 0.895,
            "teacher_accuracy": 0.975,
            "retention": 0.917948717948718,
            "student_tokens_per_step": 2.3333333,
            "teacher_tokens_per_step": 1.0,
        }
    }
    reg = {"name": "opdlm-tiny", "version": "1", "aliases": ["candidate"], "promoted": False, "gate": "g"}
    markdown, facts = render_summary(
        run,
        {"metrics": metrics, "sweep_dir": None, "student_results": None, "teacher_results": None},  # evaluate()'s keys
        [{"train_dir": str(tmp_path / "train"), "stage": "s"}],
        reg,
    )
    venv_bin = os.path.dirname(sys.executable)
    expected = serve_command("opdlm-tiny", "candidate", tracking_uri=run.tracking_uri, venv_bin=venv_bin)
    assert f"`{expected}`" in markdown and facts["serve_command"] == expected
    assert "@champion" not in expected and "holds @candidate only" in markdown
    assert "| synthetic | 0.8950 | 0.9750 | 0.9179 | 2.33 | 1.00 |" in markdown
    assert "1,234,567 training tokens" in markdown


def test_no_command_help_carries_rst_markup():
    """A docstring's ``literal`` is RST; typer prints the backticks as they are."""
    from typer.main import get_command

    from opdlm.cli import main as cli

    cli._register()
    found, todo = [], [("opdlm", get_command(cli.app))]
    while todo:
        path, command = todo.pop()
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        found += [f"{path}: {t[:60]}" for t in texts if "``" in t]
        todo += [(f"{path} {name}", sub) for name, sub in getattr(command, "commands", {}).items()]
    assert not found, found
