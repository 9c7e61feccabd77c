"""Skills: the training-data filter (``data.skills``), per-skill evaluation, the teacher's completions as
``mdm_sft`` data (``data.responses: teacher_greedy``), and the study's held-out-skill numbers."""

from __future__ import annotations

import json

import pytest

from opdlm.config.base import validate_config
from opdlm.config.recipe import Recipe
from opdlm.config.skills import SYNTHETIC_SKILLS
from opdlm.data.skills import select_skills
from opdlm.data.synthetic import FAMILIES, load_split
from opdlm.errors import ConfigError
from opdlm.eval.metrics import SampleRecord, summarize
from opdlm.study.heldout import by_budget, comparisons, retention_row, summarize_heldout
from opdlm.train.data import load_training_rows


def test_the_config_layer_names_exactly_the_suites_families():
    assert SYNTHETIC_SKILLS == FAMILIES
    assert {r.skill for r in load_split("eval", n=40)} == set(FAMILIES)


def test_a_skill_typo_fails_when_the_recipe_loads_with_one_line_naming_it():
    with pytest.raises(ConfigError) as err:
        validate_config(Recipe, {"data": {"skills": ["addition", "sortng"]}}, source="r.yaml")
    message = str(err.value)
    assert "'sortng'" in message and "data.skills" in message and "\n" not in message
    with pytest.raises(ConfigError, match="listed more than once"):
        validate_config(Recipe, {"data": {"skills": ["chain", "chain"]}})
    with pytest.raises(ConfigError, match="only mdm_sft"):
        validate_config(Recipe, {"data": {"responses": "teacher_greedy"}, "train": {"objective": "opd"}})


def test_builtin_rows_are_drawn_from_the_listed_skills_alone_and_keep_the_pool_size():
    rows = load_training_rows("builtin:synthetic", None, 40, 0, ["reversal", "chain"])
    assert len(rows) == 40 and {r.skill for r in rows} == {"reversal", "chain"}
    everything = load_training_rows("builtin:synthetic", None, 40, 0)
    assert {r.skill for r in everything} == set(FAMILIES)
    with pytest.raises(ConfigError, match="'sortng'"):
        load_training_rows("builtin:synthetic", None, 40, 0, ["sortng"])


def test_rows_from_a_file_are_filtered_on_their_skill_field(tmp_path):
    rows = load_split("train", n=12)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    kept = load_training_rows("x", str(path), None, 0, ["sorting"])
    assert kept == [r for r in rows if r.skill == "sorting"] and kept
    with pytest.raises(ConfigError, match="no row of .* has skill 'nope'"):
        select_skills(rows, ["nope"], "rows.jsonl")
    bare = [r.model_copy(update={"skill": None}) for r in rows]
    with pytest.raises(ConfigError, match="carry no skill"):
        select_skills(bare, ["sorting"], "rows.jsonl")
    assert select_skills(bare, None, "rows.jsonl") == bare


def test_the_data_stage_draws_the_same_filtered_rows_as_training(tmp_path):
    from opdlm.data.download import download_dataset
    from opdlm.data.schema import read_rows

    download_dataset("builtin:synthetic", tmp_path / "d.jsonl", limit=20, seed=3, skills=["addition"])
    assert read_rows(tmp_path / "d.jsonl") == load_training_rows("builtin:synthetic", None, 20, 3, ["addition"])


def _record(skill: str | None, correct: bool) -> SampleRecord:
    return SampleRecord("i", "p", "c", "a", None, correct, None, 1, 1, 1.0, 1, True, skill=skill)


def _summarize(records, benchmark: str):
    return summarize(
        records,
        benchmark=benchmark,
        model="m",
        model_kind="student",
        generation_s=1.0,
        max_new_tokens=8,
        seed=0,
        sampler=None,
    )


def test_per_skill_accuracy_counts_each_skills_rows():
    verdicts = [("addition", True), ("addition", False), ("chain", True), ("addition", True), ("chain", True)]
    result = _summarize([_record(s, c) for s, c in verdicts], "synthetic")
    for skill in ("addition", "chain"):  # brute force: the verdicts of that skill
        mine = [c for s, c in verdicts if s == skill]
        assert result.per_skill[skill] == {
            "n": len(mine),
            "correct": sum(mine),
            "accuracy": round(sum(mine) / len(mine), 6),
        }
    no_skills = _summarize([_record(None, True)], "gsm8k")
    assert no_skills.per_skill is None


def test_teacher_completions_are_generated_once_and_cached_by_content(tiny_teacher_dir, tmp_path, monkeypatch):
    from opdlm.eval import completions, runners

    rows = load_split("train", n=6)
    first = completions.teacher_completion_rows(
        tiny_teacher_dir, rows, max_new_tokens=6, batch_size=4, device="cpu", progress=False, cache=tmp_path
    )
    assert [r.question for r in first] == [r.question for r in rows]
    assert all(r.response is not None and r.response != o.response for r, o in zip(first, rows))
    assert len(list(tmp_path.glob("*.jsonl"))) == 1

    def no_model(*args, **kwargs):
        raise AssertionError("the cached completions must be read, not generated again")

    monkeypatch.setattr(runners, "load_runner", no_model)
    again = completions.teacher_completion_rows(
        tiny_teacher_dir, rows, max_new_tokens=6, batch_size=4, device="cpu", progress=False, cache=tmp_path
    )
    assert again == first
    with pytest.raises(AssertionError, match="cached completions"):  # other prompts: another key, a new file
        completions.teacher_completion_rows(
            tiny_teacher_dir, rows[:5], max_new_tokens=6, batch_size=4, device="cpu", progress=False, cache=tmp_path
        )


# ---- the study's held-out numbers on hand-made rows ----------------------------------------------

TEACHER = {s: {"accuracy": a} for s, a in zip(FAMILIES, (1.0, 0.8, 1.0, 0.5))}


def _arm(kind, split, seed, accs, level=100, tokens=100):
    trained = ["addition", "sorting"] if split == "a" else ["reversal", "chain"]
    return {
        "arm_id": f"{kind}-{split}-{seed}",
        "kind": kind,
        "split": split,
        "seed": seed,
        "budget_level": level,
        "training_tokens": tokens,
        "flops": 10.0 * tokens,
        "accuracy": sum(accs) / 4,
        "trained_skills": trained,
        "heldout_skills": [s for s in FAMILIES if s not in trained],
        "per_skill": {s: {"accuracy": a} for s, a in zip(FAMILIES, accs)},
    }


def test_retention_is_the_skill_mean_over_the_teachers_mean_on_the_same_skills():
    row = retention_row(_arm("opd", "a", 0, (0.9, 0.4, 0.5, 0.25)), TEACHER)
    assert row["trained_accuracy"] == pytest.approx((0.9 + 0.4) / 2)
    assert row["trained_retention"] == pytest.approx(0.65 / 0.9)
    assert row["heldout_retention"] == pytest.approx(((0.5 + 0.25) / 2) / ((1.0 + 0.5) / 2))


def test_a_seeds_retention_averages_its_splits_and_a_missing_split_leaves_the_seed_out():
    arms = [
        _arm("opd", "a", 0, (0.9, 0.4, 0.5, 0.25)),
        _arm("opd", "b", 0, (0.2, 0.4, 1.0, 0.5)),
        _arm("opd", "a", 1, (0.9, 0.4, 0.1, 0.1)),  # seed 1 lacks split b
        _arm("mdm_sft", "a", 0, (1.0, 0.8, 0.0, 0.0)),
        _arm("mdm_sft", "b", 0, (0.1, 0.0, 1.0, 0.5)),
    ]
    rows = [retention_row(a, TEACHER) for a in arms]
    groups = {g["kind"]: g for g in by_budget(rows)}
    opd = groups["opd"]
    expected = (rows[0]["heldout_retention"] + rows[1]["heldout_retention"]) / 2
    assert opd["heldout_retention_by_seed"] == {0: pytest.approx(expected)} and not opd["complete"]
    assert opd["heldout_retention"] == pytest.approx(expected)
    (comp,) = comparisons(list(groups.values()))
    base = (rows[3]["heldout_retention"] + rows[4]["heldout_retention"]) / 2
    assert comp["baseline"] == "mdm_sft" and comp["delta"] == pytest.approx(expected - base)
    assert comp["delta_by_seed"] == {0: pytest.approx(expected - base)}


def test_the_heldout_summary_states_wins_per_budget_and_baseline_in_every_seed():
    arms = [
        _arm(kind, split, seed, accs)
        for seed in (0, 1)
        for split in ("a", "b")
        for kind, accs in (
            ("opd", (0.5, 0.5, 0.5, 0.5)),
            ("mdm_sft", (0.9, 0.9, 0.1, 0.1) if split == "a" else (0.1, 0.1, 0.9, 0.9)),  # good on trained skills
        )
    ]
    summary = summarize_heldout(arms, TEACHER)
    assert summary["statement"].startswith("OPD's held-out retention beats the baseline in every seed at 1 of 1")
    assert {c["skill"] for c in summary["per_skill"]} == set(FAMILIES)
    cell = next(c for c in summary["per_skill"] if c["kind"] == "mdm_sft" and c["skill"] == "addition")
    assert cell["trained"] == pytest.approx(0.9) and cell["heldout"] == pytest.approx(0.1)
    json.dumps(summary)  # it goes into results.json


def test_the_heldout_plot_and_table_are_written(tmp_path):
    from opdlm.study.heldout import markdown_heldout
    from opdlm.study.plots import plot_heldout_retention

    arms = [
        _arm(k, s, 0, (0.5, 0.6, 0.7, 0.8), level=b, tokens=b)
        for k in ("opd", "mdm_sft_teacher")
        for s in "ab"
        for b in (100, 1000)
    ]
    summary = summarize_heldout(arms, TEACHER)
    png = plot_heldout_retention(summary, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = "\n".join(markdown_heldout(summary))
    assert "## Held-out skills" in md and "teacher's greedy completions" in md and "s0:" in md


def test_study_heldout_section_validates_skills_and_sections(tmp_path):
    from opdlm.study.config import load_study

    base = "recipe: {train: {stages: [{name: m, rollout_steps: 5}]}}\nstudy: {budgets: [10]}\n"
    path = tmp_path / "s.yaml"
    path.write_text(base + "heldout: {budgets: [10], splits: [{name: x, train: [additon]}]}\n")
    with pytest.raises(ConfigError, match="'additon'"):
        load_study(path)
    path.write_text(
        base + "heldout: {budgets: [10], splits: [{name: x, train: [addition, sorting, reversal, chain]}]}\n"
    )
    with pytest.raises(ConfigError, match="hold out at least one"):
        load_study(path)
    path.write_text(base)
    with pytest.raises(ConfigError, match="no heldout section"):
        load_study(path, ["study.sections=[heldout]"])
    assert not load_study(path).runs_heldout


def test_heldout_arms_train_on_their_split_and_baselines_match_the_splits_opd_tokens():
    from opdlm.study.arms import arm_recipe, heldout_baseline_arms, heldout_opd_arms
    from opdlm.study.config import HeldoutConfig, SkillSplit
    from opdlm.study.plan import heldout_matched

    held = HeldoutConfig(
        budgets=[100, 200], seeds=[0, 1], splits=[SkillSplit(name="as", train=["addition", "sorting"])]
    )
    opd = heldout_opd_arms(held)
    assert [a.budget for a, _ in opd] == [100, 100, 200, 200]  # budget by budget
    recipe = arm_recipe(Recipe(), opd[0][0])
    assert recipe.data.skills == ["addition", "sorting"] and recipe.train.objective == "opd"
    results = [
        {"group": "heldout", "objective": "opd", "split": "as", "budget": 100, "training_tokens": t} for t in (90, 110)
    ]
    matched = heldout_matched(results, "as")
    assert matched == {100: 100}
    base = heldout_baseline_arms(held, held.splits[0], ["train.exclude_eos_from_loss=false"], matched)
    assert {(t["kind"], a.budget) for a, t in base} == {("mdm_sft", 100), ("mdm_sft_teacher", 100)}
    teacher_arm = next(a for a, t in base if t["kind"] == "mdm_sft_teacher")
    r = arm_recipe(Recipe(), teacher_arm)
    assert (
        r.data.responses == "teacher_greedy"
        and r.train.objective == "mdm_sft"
        and r.data.skills
        == [
            "addition",
            "sorting",
        ]
    )
    assert all(t["heldout_skills"] == ["reversal", "chain"] and t["budget_level"] == 100 for _, t in base)
