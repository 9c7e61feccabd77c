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

    def to_dict(self) -> dict:
        return asdict(self)


def champion_gate(
    student_accuracy: float, teacher_accuracy: float, champion_accuracy: float | None, config: RegistryConfig
) -> GateDecision:
    """Decide whether the student becomes champion.

    Args:
        student_accuracy: the student's accuracy on ``config.gate_benchmark``.
        teacher_accuracy: the teacher's accuracy on the same benchmark.
        champion_accuracy: the current champion's accuracy there; None when there is no champion.
        config: the recipe's ``registry`` section.
    """
    required = config.min_retention * teacher_accuracy
    facts = dict(
        student_accuracy=student_accuracy,
        teacher_accuracy=teacher_accuracy,
        required_accuracy=required,
        champion_accuracy=champion_accuracy,
    )
    bench = config.gate_benchmark
    if student_accuracy < required:
        return GateDecision(
            False,
            f"{bench}: student accuracy {student_accuracy:.4f} < {config.min_retention:g} x teacher "
            f"{teacher_accuracy:.4f} = {required:.4f}",
            **facts,
        )
    if config.not_below_champion and champion_accuracy is not None and student_accuracy < champion_accuracy:
        return GateDecision(
            False,
            f"{bench}: student accuracy {student_accuracy:.4f} < current champion's {champion_accuracy:.4f}",
            **facts,
        )
    champion_note = "no champion yet" if champion_accuracy is None else f"champion {champion_accuracy:.4f}"
    return GateDecision(
        True,
        f"{bench}: student accuracy {student_accuracy:.4f} >= {required:.4f} "
        f"({config.min_retention:g} x teacher {teacher_accuracy:.4f}); {champion_note}",
        **facts,
    )
