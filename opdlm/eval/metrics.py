"""Per-sample records, the run-level metrics computed from them, and where the records are written.

Tokens per step is the paper's: total generated tokens over total denoising steps (a step is one
distinct entry of a sequence's step map), so autoregressive decoding scores exactly 1.0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class SampleRecord:
    """One benchmark row's generation and verdict (one line of the per-sample JSONL)."""

    id: str
    prompt: str
    completion: str
    answer: str
    extracted: str | None
    correct: bool
    status: str | None
    num_tokens: int
    num_steps: int
    tokens_per_step: float
    num_forwards: int
    finished: bool
    token_ids: list[int] = field(default_factory=list)
    teacher_nll: list[float] | None = None
    skill: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalResult:
    """The metrics of one model on one benchmark.

    Attributes:
        accuracy: fraction of rows scored correct.
        tokens_per_step: generated tokens / denoising steps over all rows.
        mean_forwards: model forward passes per row (NFE), averaged.
        tokens_per_second: generated tokens / generation wall time (batched throughput).
        mean_length: generated tokens per row, averaged.
        finished_rate: fraction of rows that stopped at EOS rather than the length cap.
        sampler: the sampler settings used (students) or None (autoregressive decoding).
        teacher_accuracy, retention: set when a teacher result is given (retention = student / teacher).
        teacher_retention: closeness to the teacher's greedy completions on the same rows
            (:class:`opdlm.eval.retention.RetentionMetrics` as a dict: teacher NLL and its ratio to the
            teacher's own, agreement, repetition); a teacher scored alone gets its own (agreement 1).
        per_skill: skill -> ``{"n", "correct", "accuracy"}`` over the rows of that skill, when the
            benchmark's rows carry one (the synthetic suite: its task families); else None.
    """

    benchmark: str
    model: str
    model_kind: str
    n: int
    correct: int
    accuracy: float
    tokens_per_step: float
    mean_forwards: float
    total_forwards: int
    tokens_per_second: float
    mean_length: float
    finished_rate: float
    generation_s: float
    max_new_tokens: int
    seed: int
    sampler: dict | None = None
    teacher_model: str | None = None
    teacher_accuracy: float | None = None
    retention: float | None = None
    teacher_retention: dict | None = None
    samples_path: str | None = None
    per_skill: dict[str, dict] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    records: list[SampleRecord],
    *,
    benchmark: str,
    model: str,
    model_kind: str,
    generation_s: float,
    max_new_tokens: int,
    seed: int,
    sampler: dict | None,
) -> EvalResult:
    """Aggregate per-sample records into an :class:`EvalResult`."""
    n = len(records)
    tokens = sum(r.num_tokens for r in records)
    steps = sum(r.num_steps for r in records)
    forwards = sum(r.num_forwards for r in records)
    correct = sum(r.correct for r in records)
    return EvalResult(
        benchmark=benchmark,
        model=model,
        model_kind=model_kind,
        n=n,
        correct=correct,
        accuracy=round(correct / n, 6) if n else 0.0,
        tokens_per_step=round(tokens / steps, 4) if steps else 0.0,
        mean_forwards=round(forwards / n, 3) if n else 0.0,
        total_forwards=forwards,
        tokens_per_second=round(tokens / generation_s, 3) if generation_s > 0 else 0.0,
        mean_length=round(tokens / n, 3) if n else 0.0,
        finished_rate=round(sum(r.finished for r in records) / n, 6) if n else 0.0,
        generation_s=round(generation_s, 3),
        max_new_tokens=max_new_tokens,
        seed=seed,
        sampler=sampler,
        per_skill=per_skill_accuracy(records),
    )


def per_skill_accuracy(records: list[SampleRecord]) -> dict[str, dict] | None:
    """skill -> ``{"n", "correct", "accuracy"}`` (skills in first-seen order); None when no record has a skill."""
    counts: dict[str, list[int]] = {}
    for r in records:
        if r.skill is not None:
            n_correct = counts.setdefault(r.skill, [0, 0])
            n_correct[0] += 1
            n_correct[1] += int(r.correct)
    if not counts:
        return None
    return {s: {"n": n, "correct": c, "accuracy": round(c / n, 6)} for s, (n, c) in counts.items()}


def with_retention(result: EvalResult, teacher: EvalResult | dict) -> EvalResult:
    """``result`` with the teacher's accuracy and retention = student accuracy / teacher accuracy.

    Retention is None when the teacher scored 0 (the ratio is undefined).

    Raises:
        ValueError: the teacher result is for a different benchmark.
    """
    data = teacher.to_dict() if isinstance(teacher, EvalResult) else teacher
    if data.get("benchmark") != result.benchmark:
        raise ValueError(f"teacher result is for benchmark {data.get('benchmark')!r}, not {result.benchmark!r}")
    teacher_acc = float(data["accuracy"])
    result.teacher_model = data.get("model")
    result.teacher_accuracy = teacher_acc
    result.retention = round(result.accuracy / teacher_acc, 6) if teacher_acc > 0 else None
    return result


def samples_path_for(json_path: str | Path) -> Path:
    """Where the per-sample JSONL of a result JSON goes: ``run.json`` -> ``run.samples.jsonl``."""
    json_path = Path(json_path)
    stem = json_path.name[: -len(".json")] if json_path.name.endswith(".json") else json_path.name
    return json_path.with_name(f"{stem}.samples.jsonl")
