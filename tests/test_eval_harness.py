"""The evaluation harness: students and causal LMs on one code path, metrics, retention, the sweep, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from opdlm.config.eval import EvalConfig
from opdlm.errors import ConfigError, OpdlmError
from opdlm.eval.benchmarks import get_benchmark, load_benchmark
from opdlm.eval.harness import evaluate, evaluate_rows, read_result, sampler_config
from opdlm.eval.metrics import EvalResult, samples_path_for
from opdlm.eval.runners import ModelRunner, is_student_dir
from opdlm.eval.sweep import pareto_flags, sweep
from opdlm.sampling.output import SampleBatch

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
SMALL = dict(limit=3, max_new_tokens=8, batch_size=2)


class ScriptedRunner(ModelRunner):
    """A runner that "generates" given texts with given step maps, to check scoring and metrics exactly."""

    def __init__(self, tokenizer, replies: dict[str, tuple[str, list[int]]]):
        super().__init__("student", Path("scripted"), tokenizer, None, None, None)
        self.replies = replies  # question -> (text, step map)

    def generate(self, prompt_ids, cfg, seed, max_batch=None):
        texts, ids, steps = [], [], []
        for prompt in prompt_ids:
            prompt_text = self.tokenizer.decode(prompt)
            question = next(q for q in self.replies if q in prompt_text)
            text, step_map = self.replies[question]
            token_ids = self.tokenizer(text, add_special_tokens=False).input_ids[: len(step_map)]
            texts.append(text)
            ids.append(token_ids)
            steps.append(step_map[: len(token_ids)])
        return SampleBatch(ids, steps, [len(set(s)) + 1 for s in steps], [True] * len(ids), texts)


@pytest.fixture(scope="module")
def suite_tokenizer():
    from opdlm.data.tokenizer import build_tokenizer

    return build_tokenizer()


def test_accuracy_tokens_per_step_and_forwards_are_counted_exactly(suite_tokenizer):
    bench = get_benchmark("synthetic")
    rows = load_benchmark("synthetic", FIXTURES, limit=4)
    replies = {}
    for i, row in enumerate(rows):
        text = row.response if i < 3 else row.response.replace(row.answer, row.answer + "9")  # last one wrong
        n = len(suite_tokenizer(text, add_special_tokens=False).input_ids)
        replies[row.question] = (text, [k // 2 for k in range(n)])  # two tokens per step
    runner = ScriptedRunner(suite_tokenizer, replies)
    cfg = sampler_config(runner, 128)
    result, records = evaluate_rows(runner, bench, rows, EvalConfig(batch_size=3), cfg)
    assert (result.n, result.correct, result.accuracy) == (4, 3, 0.75)
    assert [r.correct for r in records] == [True, True, True, False]
    tokens = sum(r.num_tokens for r in records)
    steps = sum(r.num_steps for r in records)
    assert steps == sum((r.num_tokens + 1) // 2 for r in records)
    assert result.tokens_per_step == pytest.approx(tokens / steps, abs=1e-4)
    assert result.mean_length == pytest.approx(tokens / 4, abs=1e-3)
    assert result.total_forwards == sum(r.num_steps + 1 for r in records)
    assert records[3].extracted == rows[3].answer + "9" and result.finished_rate == 1.0


def test_student_and_causal_lm_share_the_harness(tiny_student_dir, tiny_teacher_dir, tmp_path):
    assert is_student_dir(tiny_student_dir) and not is_student_dir(tiny_teacher_dir)
    config = EvalConfig(**SMALL)
    teacher = evaluate(tiny_teacher_dir, "synthetic", config, json_out=tmp_path / "teacher.json")
    assert teacher.model_kind == "causal_lm" and teacher.n == 3 and teacher.sampler is None
    assert teacher.tokens_per_step == 1.0 and teacher.mean_forwards == pytest.approx(teacher.mean_length, abs=1e-6)
    student = evaluate(
        tiny_student_dir,
        "synthetic",
        config,
        threshold=0.5,
        block_size=2,
        teacher_result=read_result(tmp_path / "teacher.json"),
        json_out=tmp_path / "student.json",
    )
    assert student.model_kind == "student" and student.sampler["remasking"] == "dynamic"
    assert student.sampler["threshold"] == 0.5 and student.sampler["block_size"] == 2
    assert student.tokens_per_step >= 1.0 and student.mean_length <= 8
    assert student.teacher_accuracy == teacher.accuracy and student.teacher_model == str(tiny_teacher_dir)
    saved = json.loads((tmp_path / "student.json").read_text())
    assert saved["samples_path"] == str(tmp_path / "student.samples.jsonl")
    samples = [json.loads(x) for x in (tmp_path / "student.samples.jsonl").read_text().splitlines()]
    assert (
        len(samples) == 3
        and {"id", "prompt", "completion", "correct", "tokens_per_step", "num_forwards"} <= samples[0].keys()
    )
    assert [s["id"] for s in samples] == [r.id for r in load_benchmark("synthetic", FIXTURES, limit=3)]


def test_retention_is_student_over_teacher():
    from opdlm.eval.metrics import with_retention

    base = dict(
        model="s",
        model_kind="student",
        n=10,
        correct=8,
        accuracy=0.8,
        tokens_per_step=2.0,
        mean_forwards=5.0,
        total_forwards=50,
        tokens_per_second=1.0,
        mean_length=10.0,
        finished_rate=1.0,
        generation_s=1.0,
        max_new_tokens=8,
        seed=0,
    )
    student = EvalResult(benchmark="synthetic", **base)
    assert with_retention(
        replace(student), {"benchmark": "synthetic", "accuracy": 0.9, "model": "t"}
    ).retention == pytest.approx(0.8 / 0.9, abs=1e-6)
    assert with_retention(replace(student), {"benchmark": "synthetic", "accuracy": 0.0}).retention is None
    with pytest.raises(ValueError, match="teacher result is for benchmark 'gsm8k'"):
        with_retention(replace(student), {"benchmark": "gsm8k", "accuracy": 0.5})


def test_sampler_settings_for_each_kind(tiny_student_dir):
    from opdlm.config.sampler import SamplerConfig
    from opdlm.eval.runners import load_runner

    runner = load_runner(tiny_student_dir, device="cpu")
    cfg = sampler_config(runner, 16, threshold=0.8, block_size=2)
    assert (cfg.remasking, cfg.threshold, cfg.block_size, cfg.max_new_tokens) == ("dynamic", 0.8, 2, 16)
    assert cfg.denoise_steps_per_block <= 2
    recipe_sampler = SamplerConfig(remasking="static", denoise_steps_per_block=2, max_new_tokens=64)
    assert sampler_config(runner, 16, base=recipe_sampler).remasking == "static"
    with pytest.raises(ConfigError, match="threshold"):
        sampler_config(runner, 16, threshold=1.5)


def test_pareto_flags():
    points = [(0.9, 1.0), (0.8, 2.0), (0.7, 1.5), (0.9, 1.0), (0.6, 3.0), (0.5, 2.5)]
    assert pareto_flags(points) == [True, True, False, True, True, False]
    assert pareto_flags([(0.5, 1.0)]) == [True]


def test_sweep_writes_table_plot_and_points(tiny_student_dir, tmp_path):
    config = EvalConfig(**SMALL, sweep_thresholds=[1.0, 0.5], sweep_block_sizes=[2, 4])
    table = sweep(tiny_student_dir, "synthetic", config, tmp_path / "sweep")
    assert [(p["block_size"], p["threshold"]) for p in table] == [(2, 1.0), (2, 0.5), (4, 1.0), (4, 0.5)]
    assert [p["pareto"] for p in table] == pareto_flags([(p["accuracy"], p["tokens_per_step"]) for p in table])
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["points"] == table and saved["n"] == 3
    png = (tmp_path / "sweep" / "sweep_pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    for point in table:
        result = json.loads(Path(point["result_path"]).read_text())
        assert (
            result["sampler"]["threshold"] == point["threshold"]
            and result["sampler"]["block_size"] == point["block_size"]
        )
        assert Path(samples_path_for(point["result_path"])).is_file()


def test_sweep_refuses_a_causal_lm(tiny_teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs a converted student"):
        sweep(tiny_teacher_dir, "synthetic", EvalConfig(**SMALL), tmp_path)


def test_eval_config_validation():
    from opdlm.config.base import validate_config

    with pytest.raises(ConfigError, match="unknown benchmark 'gsm9k'"):
        validate_config(EvalConfig, {"benchmarks": ["gsm9k"]})
    with pytest.raises(ConfigError, match=r"sweep_thresholds: every threshold must be in \(0, 1\] \(got 1.5\)"):
        validate_config(EvalConfig, {"sweep_thresholds": [0.9, 1.5]})
    with pytest.raises(ConfigError, match="limit"):
        validate_config(EvalConfig, {"limit": 0})


def test_read_result_errors(tmp_path):
    with pytest.raises(OpdlmError, match="result file not found"):
        read_result(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"benchmark": "synthetic"}')
    with pytest.raises(OpdlmError, match="no 'accuracy' field"):
        read_result(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- the CLI


def test_cli_eval_with_teacher_reports_retention(tiny_student_dir, tiny_teacher_dir, tmp_path, capsys):
    from opdlm.cli.main import main

    out = tmp_path / "run" / "synthetic.json"
    args = [
        "eval",
        "--model",
        str(tiny_student_dir),
        "--teacher",
        str(tiny_teacher_dir),
        "--benchmark",
        "synthetic",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--json-out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[causal_lm]" in printed and "[student]" in printed and "retention" in printed
    result = json.loads(out.read_text())
    assert result["teacher_model"] == str(tiny_teacher_dir) and result["n"] == 2
    teacher = json.loads((tmp_path / "run" / "synthetic.teacher.json").read_text())
    assert teacher["model_kind"] == "causal_lm" and result["teacher_accuracy"] == teacher["accuracy"]
    # The teacher's JSON from that run gives retention to a later student-only run.
    again = tmp_path / "again.json"
    args = [
        "eval",
        "--model",
        str(tiny_student_dir),
        "--teacher-json",
        str(tmp_path / "run" / "synthetic.teacher.json"),
        "--benchmark",
        "synthetic",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--json-out",
        str(again),
        "--no-progress",
    ]
    assert main(args) == 0
    assert json.loads(again.read_text())["teacher_accuracy"] == teacher["accuracy"]


def test_cli_eval_reads_the_recipe_eval_section(tiny_student_dir, tmp_path, capsys):
    from opdlm.cli.main import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"eval:\n  benchmarks: [gsm8k]\n  data_dir: {FIXTURES}\n  limit: 2\n  batch_size: 2\n"
        "sampler:\n  remasking: static\n  max_new_tokens: 8\n"
    )
    out_dir = tmp_path / "results"
    assert (
        main(
            [
                "eval",
                "--config",
                str(recipe),
                "--model",
                str(tiny_student_dir),
                "--out-dir",
                str(out_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((out_dir / "gsm8k.json").read_text())
    assert result["n"] == 2 and result["sampler"]["remasking"] == "static" and result["max_new_tokens"] == 8
    assert "gsm8k: accuracy" in capsys.readouterr().out


def test_cli_sweep(tiny_student_dir, tmp_path, capsys):
    from opdlm.cli.main import main

    args = [
        "eval",
        "--model",
        str(tiny_student_dir),
        "--benchmark",
        "synthetic",
        "--sweep",
        "--thresholds",
        "1.0,0.7",
        "--block-sizes",
        "4",
        "--out-dir",
        str(tmp_path),
        "--no-progress",
        "limit=2",
        "max_new_tokens=8",
    ]
    assert main(args) == 0
    assert len(json.loads((tmp_path / "sweep.json").read_text())["points"]) == 2
    assert (tmp_path / "sweep_pareto.png").is_file() and "Pareto" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--benchmark", "gsm9k"], "unknown benchmark 'gsm9k'"),
        (["--benchmark", "synthetic", "--sweep"], "give --out-dir"),
        (["--benchmark", "synthetic", "--threshold", "1.5", "--limit", "1"], "threshold"),
        (["--benchmark", "gsm8k", "--data-dir", "/nonexistent"], "data file not found"),
        (["--benchmark", "synthetic", "--teacher-json", "/nonexistent.json"], "result file not found"),
        (["--benchmark", "synthetic", "--thresholds", "a,b", "--sweep", "--out-dir", "/tmp"], "--thresholds"),
        (["--benchmark", "synthetic", "lmit=3"], "did you mean 'limit'"),
        (
            ["--benchmark", "synthetic", "--sweep", "--block-sizes", "4.5", "--out-dir", "/tmp"],
            "comma-separated integers",
        ),
        (["--benchmark", "synthetic", "--sweep", "--threshold", "0.9", "--out-dir", "/tmp"], "--thresholds"),
    ],
)
def test_cli_eval_errors_are_one_line(tiny_student_dir, extra, needle, capsys):
    from opdlm.cli.main import main

    assert main(["eval", "--model", str(tiny_student_dir), "--no-progress", *extra]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], errors


def test_cli_eval_missing_model(tmp_path, capsys):
    from opdlm.cli.main import main

    assert main(["eval", "--model", str(tmp_path / "nope"), "--benchmark", "synthetic"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_teacher_retention_rides_on_the_teacher_completions_the_harness_already_made(
    tiny_student_dir, tiny_teacher_dir, tmp_path
):
    """The teacher scored alone is its own reference; a student is scored by that teacher on the teacher's
    prompts, token for token (a plain causal forward per row), against the teacher's saved completions."""
    import torch

    from opdlm.eval.retention import lcs_f1
    from opdlm.models.student import load_causal_lm

    config = EvalConfig(**SMALL)
    teacher = evaluate(tiny_teacher_dir, "synthetic", config, json_out=tmp_path / "teacher.json")
    own = teacher.teacher_retention
    assert own["agreement"] == own["exact_match"] == 1.0 and own["nll_ratio"] == 1.0 and own["n"] == 3
    student = evaluate(
        tiny_student_dir,
        "synthetic",
        config,
        teacher_result=read_result(tmp_path / "teacher.json"),
        json_out=tmp_path / "student.json",
    )
    kept = student.teacher_retention
    t_rows = [json.loads(x) for x in samples_path_for(tmp_path / "teacher.json").read_text().splitlines()]
    s_rows = [json.loads(x) for x in samples_path_for(tmp_path / "student.json").read_text().splitlines()]
    assert kept["teacher_self_nll"] == own["teacher_nll"]  # reused from the teacher's samples, not recomputed
    assert kept["agreement"] == pytest.approx(
        sum(lcs_f1(s["token_ids"], t["token_ids"]) for s, t in zip(s_rows, t_rows)) / 3, abs=1e-6
    )
    model, tok = load_causal_lm(tiny_teacher_dir, device="cpu")
    total, count = 0.0, 0
    for s, t in zip(s_rows, t_rows):
        prompt = tok(t["prompt"], add_special_tokens=False).input_ids
        ids = [i if i < model.config.vocab_size else 0 for i in s["token_ids"]]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].float(), -1)
        for k, token in enumerate(s["token_ids"]):
            row = logp[len(prompt) - 1 + k]
            want = -(row[token] if token < model.config.vocab_size else row.min()).item()
            assert s["teacher_nll"][k] == pytest.approx(want, abs=1e-3)
            total, count = total + want, count + 1
    assert kept["teacher_nll"] == pytest.approx(total / count, abs=1e-3)
    off = evaluate(tiny_student_dir, "synthetic", EvalConfig(**SMALL, retention=False), teacher_result=teacher)
    assert off.teacher_retention is None
