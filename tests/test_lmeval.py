"""lm-eval's ``opdlm`` model type: the real lm-eval CLI and Python API over a local task, against ``opdlm eval``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from opdlm.config.eval import EvalConfig  # noqa: E402
from opdlm.errors import ConfigError  # noqa: E402
from opdlm.eval.benchmarks import load_benchmark  # noqa: E402
from opdlm.eval.harness import evaluate  # noqa: E402

ROWS = 4
MAX_GEN = 12
TASK = "opdlm_synth"
MC_TASK = "opdlm_synth_mc"

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {max_gen}
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
MC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}} Answer:"
doc_to_choice: "{{{{[answer, answer + '1']}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
"""
UTILS = """from opdlm.data.synthetic import is_correct


def process_results(doc, results):
    return {"acc": float(is_correct(results[0], doc["answer"]))}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Peaky tiny teacher + student with the suite's chat-template tokenizer, and two local lm-eval tasks."""
    from opdlm.data.tokenizer import build_tokenizer
    from opdlm.sources.convert import convert_teacher
    from opdlm.testing.tiny import make_tiny_causal_lm

    root = tmp_path_factory.mktemp("lmeval")
    teacher = make_tiny_causal_lm(root / "teacher", "qwen3", tokenizer=build_tokenizer(), init_std=1.0, seed=3)
    student = convert_teacher(teacher, root / "student", block_size=4)
    rows = load_benchmark("synthetic", root, ROWS, 0)
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": r.question, "answer": r.answer}) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, rows=data, max_gen=MAX_GEN))
    (tasks / f"{MC_TASK}.yaml").write_text(MC_YAML.format(task=MC_TASK, rows=data))
    (tasks / "utils.py").write_text(UTILS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_DATASETS_CACHE", str(root / "hf-datasets"))
        yield {"teacher": teacher, "student": student, "tasks": tasks, "root": root}


@pytest.fixture(scope="module")
def tasks(world):
    """Our two local tasks only: indexing lm-eval's thousands of built-in task YAMLs costs ~10 s of CPU."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(world["tasks"]), include_defaults=False)


def _opdlm_eval(model_dir, out: Path, threshold: float | None = None, temperature: float | None = None):
    """``opdlm eval --threshold`` on the same rows (a temperature goes into the stored sampler settings);
    returns the result and its per-sample records."""
    from opdlm.config.sampler import SamplerConfig

    base = None
    if temperature is not None:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        stored = SamplerConfig.model_validate({**config["sampler_defaults"], "block_size": config["block_size"]})
        base = stored.with_overrides(temperature=temperature)
    cfg = EvalConfig(limit=ROWS, max_new_tokens=MAX_GEN, batch_size=2, device="cpu")
    result = evaluate(model_dir, "synthetic", cfg, sampler=base, threshold=threshold, json_out=out)
    return result, [json.loads(line) for line in Path(result.samples_path).read_text().splitlines()]


@pytest.mark.parametrize(
    ("kind", "sampler"),
    [("student", {"threshold": 0.5}), ("teacher", {}), ("student", {"threshold": 0.5, "temperature": 1.0})],
    ids=["student-greedy", "teacher-greedy", "student-sampled"],
)
def test_python_api_scores_equal_opdlm_eval_and_logs_speed(world, tasks, tmp_path, kind, sampler):
    import lm_eval

    import opdlm.lmeval  # noqa: F401  (registers --model opdlm)

    model_dir = world[kind]
    requests = tmp_path / "requests.jsonl"
    results = lm_eval.simple_evaluate(
        model="opdlm",
        model_args={
            "pretrained": str(model_dir),
            "batch_size": 2,
            "device": "cpu",
            "requests_jsonl": str(requests),
            **sampler,
        },
        tasks=[TASK],
        task_manager=tasks,
        log_samples=True,
        gen_kwargs="do_sample=true" if "temperature" in sampler else None,
    )
    ref, records = _opdlm_eval(model_dir, tmp_path / "ref.json", **(sampler if kind == "student" else {}))

    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == [r["completion"] for r in records]
    assert results["results"][TASK]["acc,none"] == pytest.approx(ref.accuracy)
    speed = [json.loads(line) for line in requests.read_text().splitlines()]
    by_doc = {s["doc_id"]: s for s in speed}
    assert [by_doc[i]["tokens_per_step"] for i in range(ROWS)] == [r["tokens_per_step"] for r in records]
    assert [by_doc[i]["num_forwards"] for i in range(ROWS)] == [r["num_forwards"] for r in records]
    summary = results["config"]["opdlm"]
    assert summary["model_kind"] == ("student" if kind == "student" else "causal_lm")
    assert summary["tokens_per_step"] == pytest.approx(ref.tokens_per_step)
    assert summary["tasks"][TASK]["requests"] == ROWS
    if kind == "student" and "temperature" not in sampler:
        assert summary["tokens_per_step"] > 1.0  # the peaky student commits several tokens per step


def test_cli_writes_results_with_speed_and_request_jsonl_beside_them(world, tmp_path, capsys):
    """The real lm-eval command line (it indexes every built-in task, so only this test uses it)."""
    from opdlm.cli.main import main

    out = tmp_path / "out"
    code = main(
        [
            "lm-eval",
            "--model",
            "opdlm",
            "--model_args",
            f"pretrained={world['student']},threshold=0.5",
            "--tasks",
            TASK,
            "--include_path",
            str(world["tasks"]),
            "--output_path",
            str(out),
            "--batch_size",
            "2",
            "--limit",
            "2",
        ]
    )
    assert code == 0
    (results_file,) = out.rglob("results_*.json")
    (requests_file,) = out.rglob("opdlm_requests_*.jsonl")
    assert requests_file.parent == results_file.parent
    results = json.loads(results_file.read_text())
    assert results["config"]["opdlm"]["requests"] == 2
    assert results["config"]["opdlm"]["requests_jsonl"] == str(requests_file)
    lines = [json.loads(line) for line in requests_file.read_text().splitlines()]
    assert sorted(r["doc_id"] for r in lines) == [0, 1]
    assert all(r["tokens_per_step"] == round(r["num_tokens"] / r["num_steps"], 4) for r in lines)
    assert {r["stopped_by"] for r in lines} <= {"eos", "length"}  # the task gives no stop strings
    assert "acc" in capsys.readouterr().out  # lm-eval's own table


def test_cli_teacher_runs_generation_and_loglikelihood_tasks(world, tmp_path):
    """The teacher through the real command line: a generate_until and a multiple-choice task in one run."""
    from opdlm.cli.main import main

    out = tmp_path / "out.json"
    code = main(
        [
            "lm-eval",
            "--model",
            "opdlm",
            "--model_args",
            f"pretrained={world['teacher']}",
            "--tasks",
            TASK,
            MC_TASK,
            "--include_path",
            str(world["tasks"]),
            "--output_path",
            str(out),
            "--limit",
            "2",
        ]
    )
    assert code == 0
    (results_file,) = tmp_path.glob("out_*.json")
    (requests_file,) = tmp_path.glob("out_opdlm_requests_*.jsonl")
    results = json.loads(results_file.read_text())
    assert set(results["results"]) == {TASK, MC_TASK}
    assert 0.0 <= results["results"][MC_TASK]["acc,none"] <= 1.0
    assert results["config"]["opdlm"]["model_kind"] == "causal_lm"
    assert results["config"]["opdlm"]["tokens_per_step"] == 1.0  # autoregressive: one token per forward
    assert len(requests_file.read_text().splitlines()) == 2  # generate_until requests only


def test_student_refuses_loglikelihood_tasks_in_one_line(world, tasks):
    import lm_eval

    from opdlm.lmeval.model import STUDENT_LOGLIKELIHOOD_ERROR

    with pytest.raises(ConfigError) as info:
        lm_eval.simple_evaluate(
            model="opdlm",
            model_args={"pretrained": str(world["student"]), "device": "cpu"},
            tasks=[MC_TASK],
            task_manager=tasks,
            limit=1,
        )
    assert str(info.value) == STUDENT_LOGLIKELIHOOD_ERROR and "\n" not in str(info.value)


def test_bad_model_arg_is_one_line_naming_it(world):
    from opdlm.lmeval import OpdlmLM

    with pytest.raises(ConfigError, match="treshold") as info:
        OpdlmLM.create_from_arg_string(f"pretrained={world['student']},treshold=0.9", {"batch_size": 1, "device": None})
    assert "lm-eval --model_args" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="converted with enable_thinking=false"):  # as `opdlm eval` refuses it
        OpdlmLM(pretrained=str(world["student"]), enable_thinking=True, device="cpu")


@pytest.fixture(scope="module")
def teacher_lm(world):
    from opdlm.lmeval import OpdlmLM

    return OpdlmLM(pretrained=str(world["teacher"]), device="cpu", batch_size=2)


def _instance(kind: str, args: tuple, doc_id: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=("t", doc_id, 1))


def test_teacher_loglikelihoods_are_exact(teacher_lm):
    """Against a token-by-token brute force: log p(cont | ctx) and the rolling whole-string score."""
    import torch

    model, tok = teacher_lm.runner.model, teacher_lm.tokenizer

    def brute(ids: list[int], start: int) -> tuple[float, bool]:
        total, greedy = 0.0, True
        for t in range(start, len(ids)):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].float(), -1)
            total += logp[ids[t]].item()
            greedy &= int(logp.argmax()) == ids[t]
        return total, greedy

    pairs = [("Compute 3+4.", " 7"), ("Sort the digits 5 7 6.", " 567 and more")]
    got = teacher_lm.loglikelihood([_instance("loglikelihood", p, i) for i, p in enumerate(pairs)])
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        ctx_ids = tok(ctx, add_special_tokens=False).input_ids
        whole = tok(ctx + cont, add_special_tokens=False).input_ids
        ref_lp, ref_greedy = brute(whole, len(ctx_ids))
        assert lp == pytest.approx(ref_lp, abs=1e-4) and greedy == ref_greedy
    text = "Reverse the digits 4 9 0."
    (rolling,) = teacher_lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))])
    ids = [tok.eos_token_id, *tok(text, add_special_tokens=False).input_ids]  # scored after the EOS prefix
    assert rolling == pytest.approx(brute(ids, 1)[0], abs=1e-4)


def test_stop_strings_and_max_gen_toks_cut_text_and_token_counts(teacher_lm):
    context = "Compute 3+4+5."
    (full,) = teacher_lm.generate_until([_instance("generate_until", (context, {"until": [], "max_gen_toks": 10}))])
    full_tokens = teacher_lm.requests[-1].num_tokens
    stop = full.strip()[2:4]
    assert stop and stop in full
    (cut,) = teacher_lm.generate_until([_instance("generate_until", (context, {"until": [stop], "max_gen_toks": 10}))])
    assert cut == full[: full.index(stop)]
    record = teacher_lm.requests[-1]
    assert record.stopped_by == "stop"
    assert 0 < record.num_tokens < full_tokens == 10
    (short,) = teacher_lm.generate_until([_instance("generate_until", (context, {"until": [], "max_gen_toks": 3}))])
    assert teacher_lm.requests[-1].num_tokens == 3 and teacher_lm.requests[-1].stopped_by == "length"
    assert full.startswith(short)


def test_request_sampler_follows_lm_eval_conventions():
    from opdlm.config.sampler import SamplerConfig
    from opdlm.lmeval.args import base_sampler, parse_model_args, request_sampler

    student = SamplerConfig(block_size=4, remasking="static", threshold=0.9, temperature=0.0, max_new_tokens=64)
    args = parse_model_args({"pretrained": "x", "threshold": 0.7, "block_size": 8, "temperature": 0.6})
    base = base_sampler(student, args)
    assert (base.threshold, base.remasking, base.block_size, base.temperature) == (0.7, "dynamic", 8, 0.6)
    cfg, stops = request_sampler(base, {"until": "\n\n", "max_gen_toks": 5, "do_sample": False, "temperature": 0.9})
    assert (cfg.temperature, cfg.max_new_tokens, stops) == (0.0, 5, ["\n\n"])
    teacher = base_sampler(None, args)  # a causal LM: block settings do not apply
    assert (teacher.temperature, teacher.block_size) == (0.6, SamplerConfig().block_size)
    with pytest.raises(ConfigError, match="denoise_steps_per_block"):
        base_sampler(student, parse_model_args({"pretrained": "x", "denoise_steps_per_block": 8}))
    assert parse_model_args({"pretrained": "x", "batch_size": "auto"}).batch_size == 16


def test_speed_aggregate_counts_each_batch_once():
    from opdlm.lmeval.speed import RequestSpeed, aggregate, cut_at_stop, kept_token_count

    def req(task, tokens, steps, batch, seconds):
        return RequestSpeed(task, 0, 0, tokens, steps, tokens / steps, steps + 1, seconds, batch, 2, "eos")

    speed = aggregate([req("a", 8, 2, 0, 1.0), req("a", 4, 4, 0, 1.0), req("b", 6, 3, 1, 2.0)])
    assert speed["tokens_per_step"] == pytest.approx(18 / 9)
    assert speed["generation_s"] == pytest.approx(3.0)
    assert speed["tasks"]["a"]["tokens_per_step"] == pytest.approx(12 / 6)
    assert cut_at_stop("abc\n\nQ: next", ["Q:", "\n\n"]) == ("abc", True)
    assert cut_at_stop("abc", ["zz", ""]) == ("abc", False)
    pieces = ["ab", "c", "\n\n", "Q", ":"]  # token i decodes to pieces[i]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    assert kept_token_count(decode, [0, 1, 2, 3, 4], "abc") == 2  # the stop string starts at token 2
    assert kept_token_count(decode, [0, 1, 2, 3, 4], "a") == 1  # the token that straddles the cut is kept
    assert kept_token_count(decode, [0, 1, 2, 3, 4], "") == 0


def test_pipeline_eval_stage_runs_recipe_lm_eval_tasks(world, tmp_path):
    from opdlm.config.recipe import load_recipe
    from opdlm.pipeline.stages import eval_model_stage, lm_eval_metrics

    repo = Path(__file__).resolve().parents[1]
    recipe = load_recipe(
        repo / "configs" / "tiny.yaml",
        [
            "eval.limit=2",
            "eval.max_new_tokens=8",
            "eval.batch_size=2",
            "eval.device=cpu",
            f"eval.lm_eval_tasks=[{TASK}]",
            f"eval.lm_eval_include_path={world['tasks']}",
        ],
    )
    results = eval_model_stage(recipe, world["student"], tmp_path / "student")
    assert set(results) == set(recipe.eval.benchmarks)  # the built-in results are unchanged in shape
    summary = json.loads((tmp_path / "student" / "lm_eval.json").read_text())
    assert summary["speed"]["sampler"]["threshold"] == recipe.sampler.threshold
    assert (tmp_path / "student" / "lm_eval" / f"samples_{TASK}.jsonl").is_file()
    flat = lm_eval_metrics(tmp_path / "teacher-not-run", tmp_path / "student")
    assert set(flat) == {
        f"lm_eval/student/{TASK}/{k}" for k in ("acc", "acc_stderr", "tokens_per_step", "mean_forwards")
    }


def test_lm_eval_command_without_the_extra_says_how_to_install(monkeypatch, capsys):
    import sys

    from opdlm.cli.main import main

    monkeypatch.setitem(sys.modules, "lm_eval._cli", None)  # as if lm-eval were not installed
    assert main(["lm-eval", "--model", "opdlm", "--tasks", "gsm8k"]) == 2
    assert "pip install 'opdlm[lmeval]'" in capsys.readouterr().err


def test_flat_metrics_names_fit_mlflow():
    from opdlm.lmeval.run import flat_metrics

    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.5,
                "exact_match_stderr,strict-match": "N/A",
                "acc,none": 1,
                "flag,none": True,
            }
        }
    }
    assert flat_metrics(results) == {"gsm8k": {"exact_match/strict-match": 0.5, "acc": 1.0}}


def test_recipe_lm_eval_tasks_need_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ValueError, match=r"opdlm\[lmeval\]"):
        EvalConfig(lm_eval_tasks=["gsm8k"])
    assert EvalConfig().lm_eval_tasks == []
