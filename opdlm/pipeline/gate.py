"""The champion gate: when a freshly registered student may take the ``champion`` alias.

A pure function of three accuracies and the recipe's ``registry`` section, so the rule is tested
without MLflow: the student must keep at least ``min_retention`` of the teacher's accuracy on the
gate benchmark and (with ``not_below_champion``) must not score below the current champion there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from opdlm.config.registry import RegistryConfig


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and the numbers it compared."""

    promote: bool
    reason: str
    student_accuracy: float
    teacher_accuracy: float
    required_accuracy: float
    champion_accuracy: float | None
    agreement: float | None = None
    nll_ratio: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _retention_refusal(config: RegistryConfig, agreement: float | None, nll_ratio: float | None) -> str | None:
    """Why the teacher-retention bars (``min_agreement``, ``max_nll_ratio``) refuse; None when they pass."""
    bench = config.gate_benchmark
    if config.min_agreement is not None:
        if agreement is None:
            return f"{bench}: registry.min_agreement is set but the agreement with the teacher was not measured"
        if agreement < config.min_agreement:
            return (
                f"{bench}: agreement with the teacher {agreement:.4f} < registry.min_agreement {config.min_agreement:g}"
            )
    if config.max_nll_ratio is not None:
        if nll_ratio is None:
            return f"{bench}: registry.max_nll_ratio is set but the teacher NLL ratio was not measured"
        if nll_ratio > config.max_nll_ratio:
            return f"{bench}: teacher NLL ratio {nll_ratio:.4f} > registry.max_nll_ratio {config.max_nll_ratio:g}"
    return None


def champion_gate(
    student_accuracy: float,
    teacher_accuracy: float,
    champion_accuracy: float | None,
    config: RegistryConfig,
    agreement: float | None = None,
    nll_ratio: float | None = None,
) -> GateDecision:
    """Decide whether the student becomes champion.

    Args:
        student_accuracy: the student's accuracy on ``config.gate_benchmark``.
        teacher_accuracy: the teacher's accuracy on the same benchmark.
        champion_accuracy: the current champion's accuracy there; None when there is no champion.
        config: the recipe's ``registry`` section.
        agreement, nll_ratio: the student's teacher-retention numbers there (:mod:`opdlm.eval.retention`);
            needed only when ``config.min_agreement`` / ``config.max_nll_ratio`` is set.
    """
    required = config.min_retention * teacher_accuracy
    facts = dict(
        student_accuracy=student_accuracy,
        teacher_accuracy=teacher_accuracy,
        required_accuracy=required,
        champion_accuracy=champion_accuracy,
        agreement=agreement,
        nll_ratio=nll_ratio,
    )
    bench = config.gate_benchmark
    if student_accuracy < required:
        return GateDecision(
            False,
            f"{bench}: student accuracy {student_accuracy:.4f} < {config.min_retention:g} x teacher "
            f"{teacher_accuracy:.4f} = {required:.4f}",
            **facts,
        )
    if refusal := _retention_refusal(config, agreement, nll_ratio):
        return GateDecision(False, refusal, **facts)
    if config.not_below_champion and champion_accuracy is not None and student_accuracy < champion_accuracy:
        return GateDecision(
            False,
            f"{bench}: student accuracy {student_accuracy:.4f} < current champion's {champion_accuracy:.4f}",
            **facts,
        )
    champion_note = "no champion yet" if champion_accuracy is None else f"champion {champion_accuracy:.4f}"
    retention_note = "".join(
        f"; {name} {value:.4f}"
        for name, value in (("agreement", agreement), ("NLL ratio", nll_ratio))
        if value is not None
    )
    return GateDecision(
        True,
        f"{bench}: student accuracy {student_accuracy:.4f} >= {required:.4f} "
        f"({config.min_retention:g} x teacher {teacher_accuracy:.4f}){retention_note}; {champion_note}",
        **facts,
    )
