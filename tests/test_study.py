"""The reproduction study: budget planning, the headline token and FLOPs ratios, config loading, and
`opdlm study --quick` end to end (the Prefect flow ``opdlm-study`` on a test Prefect server)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from opdlm.config.recipe import Recipe
from opdlm.config.train import CurriculumStage
from opdlm.errors import ConfigError, OpdlmError
from opdlm.study.arms import Arm, arm_recipe, baseline_arms, opd_arms
from opdlm.study.budget import position_at, steps_for_budget, truncate_stages
from opdlm.study.config import StudyConfig, load_study
from opdlm.study.table import (
    ROW_KEYS,
    accuracy_at,
    curve,
    flops_fields,
    markdown,
    ratio_target_met,
    seed_means,
    summarize,
    token_ratio,
    tokens_to_reach,
)
from opdlm.train.curriculum import stage_at
from tasks.study_jobs import cached_result

ROOT = Path(__file__).resolve().parents[1]
STUDY_YAML = ROOT / "configs" / "study.yaml"


# ---- budget planning -------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 5, 6, 7, 20, 21, 44])
def test_steps_for_budget_is_the_first_prefix_reaching_the_budget(budget):
    tokens = [5, 1, 0, 7, 8, 3, 20]
    steps, spent = steps_for_budget(iter(tokens), budget, max_steps=100)
    brute = next(s for s in range(1, len(tokens) + 1) if sum(tokens[:s]) >= budget)
    assert (steps, spent) == (brute, sum(tokens[:brute]))


def test_steps_for_budget_gives_up_with_one_line():
    with pytest.raises(ConfigError, match="more than 3 rollout steps"):
        steps_for_budget(iter([0] * 10), 1, max_steps=3)


def _stages(*steps: int) -> list[CurriculumStage]:
    return [CurriculumStage(name=f"s{i}", rollout_steps=n) for i, n in enumerate(steps)]


@pytest.mark.parametrize("steps", [1, 3, 4, 9, 10, 25])
def test_truncated_curriculum_is_the_first_steps_of_the_original(steps):
    stages = _stages(4, 6)
    cut = truncate_stages(stages, steps)
    assert sum(s.rollout_steps for s in cut) == steps
    for step in range(steps):  # every step sits where it sat in the original curriculum (the last stage extends)
        a, b = stage_at(cut, step), position_at(stages, step)
        assert (a.stage.name, a.step_in_stage) == (b.stage.name, b.step_in_stage)
    for step in range(min(steps, 10)):
        assert position_at(stages, step) == stage_at(stages, step)


def test_arm_recipe_applies_overrides_seed_objective_and_steps():
    base = Recipe.model_validate(
        {"train": {"stages": [{"name": "a", "rollout_steps": 3}, {"name": "b", "rollout_steps": 50}]}}
    )
    arm = Arm("ablation", "opd", "top_k_kl", 1000, 7, ("train.kl=top_k", "convert.logit_shift=true"))
    recipe = arm_recipe(base, arm, rollout_steps=5)
    assert (recipe.train.kl, recipe.convert.logit_shift, recipe.train.seed, recipe.train.objective) == (
        "top_k",
        True,
        7,
        "opd",
    )
    assert [(s.name, s.rollout_steps) for s in recipe.train.stages] == [("a", 3), ("b", 2)]
    with pytest.raises(ConfigError, match="kl"):
        arm_recipe(base, Arm("ablation", "opd", "bad", 1, 0, ("train.kl=nope",)))


def test_grid_has_every_main_arm_ablation_and_matched_baseline():
    study = StudyConfig(
        budgets=[200, 100],
        seeds=[0, 1],
        baseline_extra_budgets=[999],
        ablations=[{"name": "x", "overrides": ["train.kl=top_k"]}],
    )
    ids = [a.arm_id for a in opd_arms(study)]
    assert ids == [
        "opd-default-b100-s0",
        "opd-default-b100-s1",
        "opd-default-b200-s0",
        "opd-default-b200-s1",
        "opd-x-b200-s0",
        "opd-x-b200-s1",
    ]
    base = baseline_arms(study, {100: 130, 200: 260})
    assert sorted({a.budget for a in base}) == [130, 260, 999] and {a.objective for a in base} == {"mdm_sft"}


def test_plan_matches_the_baseline_to_opd_and_sweeps_the_largest_arms(tmp_path):
    from opdlm.study.plan import cost_estimate, matched_budgets, sweep_jobs

    spec = load_study(STUDY_YAML, ["study.budgets=[100,200]", "study.seeds=[0,1]"])
    results = [
        {"group": "main", "objective": "opd", "budget": 100, "seed": 0, "training_tokens": 90, "arm_id": "o1"},
        {"group": "main", "objective": "opd", "budget": 200, "seed": 0, "training_tokens": 190, "arm_id": "o2s0"},
        {"group": "main", "objective": "opd", "budget": 200, "seed": 1, "training_tokens": 211, "arm_id": "o2s1"},
        {"group": "ablation", "objective": "opd", "budget": 200, "seed": 0, "training_tokens": 999, "arm_id": "a"},
        {"group": "main", "objective": "mdm_sft", "budget": 200, "seed": 0, "training_tokens": 200, "arm_id": "m"},
    ]
    assert matched_budgets(results) == {100: 90, 200: 200}  # ablations and the baseline do not count
    for r in results:
        r["model_dir"] = f"/models/{r['arm_id']}"
    jobs = sweep_jobs(spec, tmp_path, results, teacher_accuracy=0.9)
    assert [(j["meta"]["arm_id"], j["meta"]["objective"]) for j in jobs] == [("o2s0", "opd"), ("m", "mdm_sft")]
    assert jobs[0]["folder"] == str(tmp_path / "sweeps" / "o2s0")

    def job(tokens, **train):
        return {"planned_tokens": tokens, "recipe": {"train": {"objective": "opd", **train}}}

    costs = [
        cost_estimate(job(480_000, objective="mdm_sft")),
        cost_estimate(job(24_000, state_selection="all_rounds")),
        cost_estimate(job(24_000, target="future_aware")),
        cost_estimate(job(24_000)),
        cost_estimate(job(24_000, objective="mdm_sft")),
    ]
    assert costs == sorted(costs, reverse=True)


# ---- the headline ------------------------------------------------------------------------------


def test_tokens_to_reach_interpolates_in_log_tokens():
    points = [(100.0, 0.2), (1000.0, 0.6), (10000.0, 0.9)]
    tokens, kind = tokens_to_reach(points, 0.4)
    assert kind == "interpolated" and math.isclose(tokens, math.sqrt(100 * 1000))
    assert tokens_to_reach(points, 0.1) == (100.0, "at_most")
    assert tokens_to_reach(points, 0.95) == (None, "never")
    assert tokens_to_reach(points, 0.9) == (10000.0, "interpolated")


def test_token_ratio_cases_and_targets():
    baseline = [(1000.0, 0.1), (10000.0, 0.5), (100000.0, 0.7)]
    hit = token_ratio((1000.0, 0.5), baseline)
    assert (
        math.isclose(hit["ratio"], 10.0)
        and ratio_target_met(hit, 10.0) is True
        and ratio_target_met(hit, 11.0) is False
    )
    never = token_ratio((1000.0, 0.8), baseline)
    assert never["kind"] == "never" and never["ratio"] is None and ratio_target_met(never, 10.0) is True
    assert ratio_target_met(never, 1000.0) is None  # the budgets tried cannot tell
    loses = token_ratio((20000.0, 0.5), baseline)
    assert loses["ratio"] < 1 and ratio_target_met(loses, 10.0) is False


def _row(objective, budget, seed, tokens, acc, group="main", variant="default"):
    return {
        "group": group,
        "objective": objective,
        "variant": variant,
        "budget": budget,
        "seed": seed,
        "training_tokens": tokens,
        "accuracy": acc,
        "retention": None,
        "tokens_per_step": 1.0,
        "final_loss": 1.0,
        "rollout_steps": 1,
    }


def test_summary_uses_seed_means_and_states_the_ratio():
    rows = [
        _row("opd", 100, 0, 90, 0.80),
        _row("opd", 100, 1, 110, 0.90),
        _row("mdm_sft", 100, 0, 100, 0.10),
        _row("mdm_sft", 100, 1, 100, 0.20),
        _row("mdm_sft", 1000, 0, 1000, 0.40),
        _row("mdm_sft", 1000, 1, 1000, 0.50),
        _row("opd", 100, 0, 95, 0.70, group="ablation", variant="no_curriculum"),
    ]
    means = seed_means(rows)
    opd = next(g for g in means if g["objective"] == "opd" and g["group"] == "main")
    assert math.isclose(opd["accuracy"], 0.85) and math.isclose(opd["training_tokens"], 100.0)
    assert math.isclose(opd["accuracy_std"], math.sqrt(0.005))
    summary = summarize(rows, teacher_accuracy=0.9, untrained_accuracy=0.0, target_retention=0.9, target_ratio=10.0)
    assert math.isclose(summary["opd_retention"], 0.85 / 0.9) and summary["targets"]["retention_met"] is True
    assert summary["token_ratio"]["kind"] == "never" and summary["targets"]["token_ratio_met"] is True
    assert "never reaches OPD's accuracy" in summary["statement"] and "10.0x" in summary["statement"]
    meta = {
        "command": "opdlm study",
        "teacher": "t",
        "n_eval": 10,
        "eval_sampler": "B=4",
        "token_unit": "response tokens",
    }
    md = markdown(rows, [], summary, meta)
    assert "## Baseline tokens needed to match OPD" in md
    assert "| 100 | 85.0 | not reached | > 10.0x |" in md  # one row per OPD budget


def _frow(objective, budget, seed, tokens, flops, acc, group="main", variant="default"):
    return _row(objective, budget, seed, tokens, acc, group, variant) | flops_fields(
        {"rollout": flops / 4, "teacher": flops / 4, "student": flops / 2, "total": flops}
    )


def test_flops_fields_read_the_breakdown_or_a_bare_total():
    assert flops_fields({"rollout": 1.0, "teacher": 2.0, "student": 3.0, "total": 6.0}) == {
        "flops": 6.0,
        "flops_rollout": 1.0,
        "flops_teacher": 2.0,
        "flops_student": 3.0,
    }
    assert flops_fields({"rollout": 1.0, "teacher": 2.0, "student": 3.0})["flops"] == 6.0
    assert flops_fields(5.0) == {"flops": 5.0, "flops_rollout": None, "flops_teacher": None, "flops_student": None}
    assert flops_fields(None)["flops"] is None
    assert set(flops_fields(1.0)) <= set(ROW_KEYS)


@pytest.mark.parametrize("x", [100.0, 150.0, 316.0, 999.0, 1000.0, 5000.0, 10000.0])
def test_accuracy_at_is_linear_in_log_x_between_points(x):
    points = [(100.0, 0.2), (1000.0, 0.6), (10000.0, 0.9)]
    (x0, a0), (x1, a1) = next((p, q) for p, q in zip(points, points[1:]) if p[0] <= x <= q[0])
    brute = a0 + (a1 - a0) * (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
    assert math.isclose(accuracy_at(points, x), brute)
    assert accuracy_at(points, 99.0) is None and accuracy_at(points, 10001.0) is None and accuracy_at([], 1.0) is None
    # the inverse of tokens_to_reach on an increasing curve
    assert math.isclose(tokens_to_reach(points, accuracy_at(points, x))[0], x)


def test_flops_ratio_and_ablations_at_matched_flops():
    rows = [
        # OPD: 3 FLOPs per token (rollouts and teacher on top of the student's training)
        _frow("opd", 100, 0, 100, 300, 0.50),
        _frow("opd", 100, 1, 100, 300, 0.60),
        _frow("opd", 1000, 0, 1000, 3000, 0.80),
        _frow("opd", 1000, 1, 1000, 3000, 0.80),
        # baseline: 1 FLOP per token
        _frow("mdm_sft", 100, 0, 100, 100, 0.20),
        _frow("mdm_sft", 1000, 0, 1000, 1000, 0.50),
        _frow("mdm_sft", 10000, 0, 10000, 10000, 0.80),
        # cheap ablation: default tokens and FLOPs, better accuracy; costly: 3x the FLOPs per token
        _frow("opd", 100, 0, 100, 300, 0.70, "ablation", "cheap"),
        _frow("opd", 100, 1, 100, 300, 0.72, "ablation", "cheap"),
        _frow("opd", 100, 0, 100, 900, 0.62, "ablation", "costly"),
        _frow("opd", 100, 1, 100, 900, 0.66, "ablation", "costly"),
    ]
    assert curve(seed_means(rows), "opd", "flops") == [(300.0, 0.55), (3000.0, 0.8)]
    s = summarize(rows, teacher_accuracy=0.9, untrained_accuracy=0.0, target_retention=0.9, target_ratio=10.0)
    assert math.isclose(s["token_ratio"]["ratio"], 10.0) and s["token_ratio"]["baseline_tokens"] == 10000.0
    f = s["flops_ratio"]  # the same match costs the baseline 10000 FLOPs, OPD spent 3000
    assert f["kind"] == "interpolated" and math.isclose(f["ratio"], 10000 / 3000) and f["opd_flops"] == 3000.0
    assert s["targets"]["flops_ratio_met"] is False and s["opd_flops"] == 3000.0
    assert "3.3x OPD's training FLOPs" in s["flops_statement"]
    by = {c["variant"]: c for c in s["ablations"]}
    assert math.isclose(by["cheap"]["delta_at_tokens"], 0.16) and math.isclose(by["cheap"]["delta_at_flops"], 0.16)
    default_at_900 = 0.55 + 0.25 * math.log(900 / 300) / math.log(10)
    assert math.isclose(by["costly"]["default_at_flops"], default_at_900)
    assert math.isclose(by["costly"]["delta_at_tokens"], 0.09)  # wins at matched tokens ...
    assert by["costly"]["delta_at_flops"] < 0.09 - 0.1  # ... by far less (here: loses) at matched FLOPs
    assert s["best_ablation_at_flops"] == "cheap"
    never = summarize(rows[:4] + rows[4:6], 0.9, 0.0, 0.9, 10.0)["flops_ratio"]
    assert never["kind"] == "never" and never["ratio"] is None and math.isclose(never["largest_baseline_ratio"], 1 / 3)
    meta = {"command": "c", "teacher": "t", "n_eval": 10, "eval_sampler": "B=4", "token_unit": "u", "flops_unit": "f"}
    md = markdown(rows, [], s, meta)
    assert "## Baseline FLOPs needed to match OPD" in md and "| 3e+03 | 80.0 | 1e+04 | 3.33x |" in md
    assert "| cheap |" in md and "| 70.0, 72.0 |" in md and "Best ablation at matched FLOPs: cheap" in md


def test_both_accuracy_plots_are_written(tmp_path):
    from opdlm.study.plots import plot_accuracy_vs_flops, plot_accuracy_vs_tokens

    rows = [_frow("opd", 100, 0, 100, 300, 0.5), _frow("mdm_sft", 100, 0, 100, 100, 0.2)]
    rows.append(_row("opd", 100, 1, 100, 0.4) | flops_fields(None))  # no FLOPs count: left off the FLOPs plot
    for plot, name in ((plot_accuracy_vs_tokens, "t.png"), (plot_accuracy_vs_flops, "f.png")):
        assert plot(rows, 0.9, 0.1, 0.9, tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- config ------------------------------------------------------------------------------------


def test_shipped_study_file_and_its_quick_size_validate():
    full, quick = load_study(STUDY_YAML), load_study(STUDY_YAML, quick=True)
    assert len(opd_arms(quick.study)) < len(opd_arms(full.study))
    assert quick.recipe.eval.limit < full.recipe.eval.limit
    assert {a.name for a in full.study.ablations} == {
        "no_curriculum",
        "all_rounds",
        "top_k_kl",
        "no_logit_shift",
        "future_aware",
        "future_aware_top_k",
        "all_rounds_top_k",
    }
    assert full.recipe.convert.prompt_attention == "block"  # the paper's and configs/tiny.yaml's
    for ablation in full.study.ablations:  # every ablation's overrides apply to the recipe
        arm_recipe(full.recipe, Arm("ablation", "opd", ablation.name, 1, 0, tuple(ablation.overrides)))


def test_study_file_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"study\.budgets: every budget must be >= 1 token \(got 0\)"):
        load_study(STUDY_YAML, ["study.budgets=[0]"])
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        load_study(STUDY_YAML, ["study.seedz=[1]"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_study(tmp_path / "missing.yaml")


def test_base_recipe_is_merged_under_the_inline_recipe(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.002\n  min_lr: 0.0001\neval:\n  limit: 7\n")
    (tmp_path / "study.yaml").write_text(
        "base_recipe: base.yaml\nrecipe:\n  eval:\n    limit: 9\nstudy:\n  budgets: [10]\n"
    )
    spec = load_study(tmp_path / "study.yaml", ["recipe.train.min_lr=0.0002"])
    assert (spec.recipe.train.lr, spec.recipe.train.min_lr, spec.recipe.eval.limit) == (0.002, 0.0002, 9)


def test_a_result_of_another_configuration_is_never_reused(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"fingerprint": "aaa"}))
    assert cached_result(tmp_path, "aaa") == {"fingerprint": "aaa"}
    assert cached_result(tmp_path / "absent", "aaa") is None
    with pytest.raises(OpdlmError, match="different study configuration"):
        cached_result(tmp_path, "bbb")


# ---- the command ------------------------------------------------------------------------------


def _declared_commands() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["opdlm.commands"]


def test_study_command_joins_the_cli_from_flows_like_the_pipeline():
    assert _declared_commands() == {"pipeline": "flows.cli:register", "study": "flows.study_cli:register"}
    assert not (ROOT / "opdlm" / "cli" / "study_cmd.py").exists()  # the library has no study orchestration


@pytest.fixture
def study_command(monkeypatch):
    """``opdlm study`` found through its ``opdlm.commands`` entry point: pyproject.toml's declaration
    when the environment's installed metadata predates it (an editable install made before the line)."""
    import importlib.metadata as md

    if "study" in md.entry_points(group="opdlm.commands").names:
        return
    original = md.entry_points
    declared = md.EntryPoint(name="study", value=_declared_commands()["study"], group="opdlm.commands")

    def entry_points(**selection):
        found = original(**selection)
        return md.EntryPoints([*found, declared]) if selection.get("group") == "opdlm.commands" else found

    monkeypatch.setattr(md, "entry_points", entry_points)


# ---- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_teacher(tmp_path_factory):
    """A freshly bootstrapped, deliberately small teacher (the study bootstraps builtin:tiny otherwise)."""
    from opdlm.teacher import BootstrapConfig, bootstrap_teacher

    out = tmp_path_factory.mktemp("study-teacher") / "teacher"
    bootstrap_teacher(
        out,
        BootstrapConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            steps=40,
            warmup_steps=4,
            batch_size=16,
            n_train=640,
            n_eval=0,
            progress=False,
        ),
    )
    return out


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A temporary Prefect server and database for the study flow (not the user's ~/.prefect)."""
    pytest.importorskip("prefect")
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results")}):
        with prefect_test_harness(server_startup_timeout=60):
            yield


@pytest.mark.slow
def test_quick_study_writes_table_plots_and_mlflow_run_and_resumes(
    quick_teacher, prefect_server, study_command, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from opdlm.cli.main import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    out = tmp_path / "study"
    argv = [
        "study",
        "--recipe",
        str(STUDY_YAML),
        "--quick",
        "--out",
        str(out),
        "--teacher",
        str(quick_teacher),
        "--quiet",
    ]
    assert main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    quick = load_study(STUDY_YAML, quick=True).study
    arms = [r for r in rows if r["group"] != "reference"]
    assert len(arms) == len(opd_arms(quick)) + len(quick.seeds) * (
        len(quick.budgets) + len(quick.baseline_extra_budgets)
    )
    required = {"objective", "training_tokens", "accuracy", "teacher_accuracy", "tokens_per_step", "seed"}
    assert all(required <= r.keys() and set(ROW_KEYS) <= r.keys() for r in rows)
    teacher_acc = results["teacher_result"]["accuracy"]
    assert all(r["teacher_accuracy"] == teacher_acc and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert all(r["training_tokens"] > 0 and r["rollout_steps"] >= 1 for r in arms)
    baseline = [r for r in arms if r["objective"] == "mdm_sft"]
    # the baseline's tokens per step are known before training: planned == what the trainer counted
    assert baseline and all(r["training_tokens"] == r["planned_tokens"] for r in baseline)
    opd_tokens = next(r["training_tokens"] for r in arms if r["objective"] == "opd" and r["group"] == "main")
    assert any(r["budget"] == opd_tokens for r in baseline)  # matched to what OPD actually used
    assert {r["variant"] for r in arms if r["group"] == "ablation"} == {a.name for a in quick.ablations}
    assert {s["threshold"] for s in results["sweep"]} == {1.0, 0.8} and {s["objective"] for s in results["sweep"]} == {
        "opd",
        "mdm_sft",
    }
    assert all(s["tokens_per_step"] >= 1.0 for s in results["sweep"])
    assert results["summary"]["statement"] and "targets" in results["summary"]

    # the held-out section: one split, OPD and both baselines, each scored on every skill
    held, skills = results["heldout"], set(results["teacher_result"]["per_skill"])
    assert {r["kind"] for r in held["rows"]} == {"opd", "mdm_sft", "mdm_sft_teacher"}
    assert skills == {"addition", "sorting", "reversal", "chain"}
    assert all(set(r["per_skill"]) == skills and r["heldout_skills"] == ["reversal", "chain"] for r in held["rows"])
    assert all(r["training_tokens"] > 0 and r["flops"] > 0 for r in held["rows"])
    assert (out / "plots" / "heldout_retention.png").is_file() and "## Held-out skills" in (
        out / "results.md"
    ).read_text()

    assert all(r["flops"] > 0 for r in arms)  # every arm on the FLOPs axis too
    assert results["summary"]["flops_ratio"] and results["summary"]["flops_statement"]
    for png in ("accuracy_vs_tokens.png", "accuracy_vs_flops.png", "accuracy_vs_tokens_per_step.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "## OPD vs baseline at matched token budgets" in md and "opdlm study --recipe" in md
    assert "## Baseline FLOPs needed to match OPD" in md

    client = MlflowClient(tracking_uri=results["mlflow"]["tracking_uri"])
    parent = client.get_run(results["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED" and "opd_accuracy" in parent.data.metrics
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "results.json",
        "results.md",
        "accuracy_vs_tokens.png",
    }
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(arms) + len(results["heldout"]["rows"])  # every held-out arm too
    assert all(c.info.status == "FINISHED" for c in children)

    # the study is a Prefect flow run whose arms are task runs named by their arm ids
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
        task_runs = prefect.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    assert flow_run.state.is_completed() and f"mlflow-run:{parent.info.run_id}" in flow_run.tags
    assert {r["arm_id"] for r in arms} <= {t.name for t in task_runs if t.state.is_completed()}

    # a re-run resumes: every arm's result is reused, not retrained
    stamps = {p: p.stat().st_mtime_ns for p in (out / "arms").glob("*/result.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "arms").glob("*/result.json")} == stamps
    again = json.loads((out / "results.json").read_text())
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in rows]


@pytest.mark.slow  # starts a Prefect server (~15-30 s on 2 busy cores)
def test_pool_workers_report_to_the_flows_own_prefect_server(tmp_path):
    """Without PREFECT_API_URL the study starts one server and its pool workers use it (Prefect's
    ephemeral mode would start one more in every worker process)."""
    import subprocess
    import sys

    script = (
        "import os\n"
        "from prefect import flow, task\n"
        "from flows.study import prefect_api, task_runner\n"
        "@task\n"
        "def url():\n"
        "    from prefect.settings import PREFECT_API_URL\n"
        "    return PREFECT_API_URL.value()\n"
        "@flow(task_runner=task_runner(2))\n"
        "def f():\n"
        "    return [u.result() for u in [url.submit(), url.submit()]]\n"
        "if __name__ == '__main__':\n"
        "    with prefect_api():\n"
        "        api = os.environ['PREFECT_API_URL']\n"
        "        assert f() == [api, api], api\n"
        "    assert 'PREFECT_API_URL' not in os.environ\n"
        "    print('ok', api)\n"
    )
    (tmp_path / "pool_api.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "pool_api.py")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ok http://127.0.0.1:"), proc.stderr[-3000:]
    assert proc.stderr.count("Starting temporary server") <= 1


def test_bad_override_fails_with_one_line_and_writes_nothing(study_command, tmp_path, capsys):
    from opdlm.cli.main import main

    out = tmp_path / "study"
    assert main(["study", "--recipe", str(STUDY_YAML), "--out", str(out), "study.workers=0"]) == 2
    assert "study.workers" in capsys.readouterr().err and not out.exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited; only its parent has not collected it


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_a_study_worker_exits_when_its_parent_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    worker = (
        "import os, time\n"
        "from tasks.study_jobs import exit_with_parent\n"
        "exit_with_parent(os.getppid(), interval=0.1)\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.PIPE, text=True)\n"
        "print(child.stdout.readline().strip(), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child_pid = int(proc.stdout.readline())
    assert _alive(child_pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid)


def test_a_second_study_in_the_same_folder_is_refused_with_one_line(tmp_path):
    import fcntl

    from flows.study import run_study
    from tasks.study_jobs import LOCK_NAME

    (tmp_path / LOCK_NAME).touch()
    with open(tmp_path / LOCK_NAME) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a study already running there
        with pytest.raises(OpdlmError, match="another study is running in"):
            run_study(STUDY_YAML, out=tmp_path, teacher=str(tmp_path / "no-teacher"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # nothing written
