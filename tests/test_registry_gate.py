"""The champion gate and the model card: pure functions, no MLflow."""

import pytest

from opdlm.config.registry import RegistryConfig
from opdlm.pipeline.gate import champion_gate
from opdlm.pipeline.model_card import ModelCardFacts, render_model_card


@pytest.mark.parametrize(
    ("student", "teacher", "champion", "promote"),
    [
        (0.90, 1.00, None, True),  # exactly 90% retention, no champion yet
        (0.89, 1.00, None, False),  # below the retention bar
        (0.95, 1.00, 0.96, False),  # keeps 95% of the teacher but is worse than the champion
        (0.96, 1.00, 0.96, True),  # ties the champion
        (0.50, 0.50, 0.20, True),
    ],
)
def test_gate_rule(student, teacher, champion, promote):
    decision = champion_gate(student, teacher, champion, RegistryConfig(min_retention=0.9))
    assert decision.promote is promote
    assert decision.required_accuracy == pytest.approx(0.9 * teacher)


def test_gate_can_ignore_the_champion_and_explains_itself():
    cfg = RegistryConfig(min_retention=0.5, not_below_champion=False)
    decision = champion_gate(0.6, 1.0, 0.99, cfg)
    assert decision.promote and "0.6000 >= 0.5000" in decision.reason
    refused = champion_gate(0.4, 1.0, None, cfg)
    assert not refused.promote and "synthetic: student accuracy 0.4000 < 0.5 x teacher" in refused.reason


def test_model_card_states_provenance_and_scores_in_a_screenful():
    facts = ModelCardFacts(
        model_name="opdlm-tiny",
        teacher="builtin:tiny",
        teacher_fingerprint="abc123",
        data_source="builtin:synthetic",
        data_digest="d41d8cd98f00b204e9800998ecf8427e",
        data_rows=64,
        code_version="0123abc",
        training_tokens=12_345,
        rollout_steps=20,
        flops=1.5e12,
        sampler_defaults={"block_size": 4, "threshold": 0.9, "max_new_tokens": 256},
        scores={
            "synthetic": {
                "student_accuracy": 0.9545454545454545,
                "teacher_accuracy": 0.97,
                "retention": 0.9840674789128398,
                "student_tokens_per_step": 1.8,
                "student_agreement": 0.81234,
            }
        },
        gate="synthetic: promoted",
        promoted=True,
        mlflow_run_id="r123",
    )
    card = render_model_card(facts)
    for text in (
        "builtin:tiny",
        "d41d8cd98f00b204e9800998ecf8427e",
        "0123abc",
        "12,345",
        "threshold=0.9",
        "| synthetic | 0.9545 | 0.9700 | 0.9841 | 0.8123 | n/a | 1.80 |",  # no NLL ratio measured: n/a
        "`r123`",
        "synthetic: promoted",
        "recipe.yaml",
        "mlflow models serve -m models:/opdlm-tiny@champion --env-manager local -p 5001",
        "knows only the synthetic suite",  # builtin:tiny: what the tiny model knows, where a user meets it
    ):
        assert text in card
    assert "0.954545" not in card and len(card.splitlines()) < 35  # rounded, and short: no recipe dump


@pytest.mark.parametrize(
    ("agreement", "nll_ratio", "promote", "said"),
    [
        (0.80, 1.2, True, "agreement 0.8000; NLL ratio 1.2000"),
        (0.59, 1.2, False, "agreement with the teacher 0.5900 < registry.min_agreement 0.6"),
        (0.80, 1.6, False, "teacher NLL ratio 1.6000 > registry.max_nll_ratio 1.5"),
        (None, 1.2, False, "min_agreement is set but the agreement with the teacher was not measured"),
    ],
)
def test_gate_on_teacher_retention_for_a_teacher_with_no_accuracy_to_keep(agreement, nll_ratio, promote, said):
    """A teacher at 0% makes the accuracy bar empty; agreement and NLL ratio still decide."""
    cfg = RegistryConfig(min_retention=0.9, min_agreement=0.6, max_nll_ratio=1.5)
    decision = champion_gate(0.0, 0.0, None, cfg, agreement=agreement, nll_ratio=nll_ratio)
    assert decision.promote is promote and said in decision.reason


def test_retention_gates_are_validated_with_the_recipe():
    from opdlm.config.base import validate_config
    from opdlm.config.recipe import Recipe
    from opdlm.errors import ConfigError

    with pytest.raises(ConfigError, match="min_agreement"):
        validate_config(Recipe, {"name": "x", "registry": {"min_agreement": 1.5}}, source="recipe")
    with pytest.raises(ConfigError, match="eval.retention is false"):
        validate_config(
            Recipe, {"name": "x", "registry": {"max_nll_ratio": 1.5}, "eval": {"retention": False}}, source="recipe"
        )
    ok = validate_config(Recipe, {"name": "x", "registry": {"min_agreement": 0.5}}, source="recipe")
    assert ok.registry.min_agreement == 0.5 and ok.eval.retention
