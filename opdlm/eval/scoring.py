"""Scoring completions by a benchmark's rules, wherever the completions came from.

The harness scores what it generates with :func:`score_completions`; ``opdlm score`` reads
completions produced by any engine with :func:`read_completions` and scores them the same way.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from opdlm.data.schema import Row
from opdlm.errors import OpdlmError
from opdlm.eval.benchmarks import Benchmark
from opdlm.eval.sandbox import SandboxLimits, run_programs
from opdlm.fsutil import read_text

ID_KEYS = ("id", "task_id")
COMPLETION_KEYS = ("completion", "response", "text")


@dataclass
class SampleScore:
    """How one completion scored.

    Attributes:
        correct: the benchmark's verdict.
        extracted: the final answer read from the completion (math, choice, synthetic); None for code.
        status: for code: ``passed``, ``failed`` or ``timeout``; None otherwise.
        detail: for a failing program, the tail of its stderr (why it failed).
    """

    correct: bool
    extracted: str | None = None
    status: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _score_answer(benchmark: Benchmark, row: Row, completion: str) -> SampleScore:
    if benchmark.scorer == "synthetic":
        from opdlm.data.synthetic import extract_answer, is_correct

        return SampleScore(bool(is_correct(completion, row.answer)), extract_answer(completion))
    if benchmark.scorer == "math":
        from opdlm.eval.math_scoring import gsm8k_final_answer, last_boxed, math_equal

        extracted = last_boxed(completion)
        extracted = extracted if extracted is not None else gsm8k_final_answer(completion)
        return SampleScore(math_equal(completion, row.answer), extracted)
    if benchmark.scorer == "choice":
        from opdlm.eval.choice import extract_choice

        letter = extract_choice(completion, benchmark.choice_letters)
        return SampleScore(letter == row.answer.strip().upper(), letter)
    raise ValueError(f"benchmark {benchmark.name}: scorer {benchmark.scorer!r} does not score answers")


def score_completions(
    benchmark: Benchmark,
    rows: list[Row],
    completions: list[str],
    code_limits: SandboxLimits | None = None,
    code_workers: int | None = None,
    allow_unsandboxed: bool = False,
) -> list[SampleScore]:
    """Score ``completions[i]`` against ``rows[i]`` by ``benchmark``'s rules.

    Code benchmarks run every test program in the sandbox (``code_workers`` at a time); a hostile
    or broken program just scores False.

    Raises:
        SandboxUnavailableError: a code benchmark, no sandbox, and ``allow_unsandboxed`` is false.
    """
    if len(rows) != len(completions):
        raise ValueError(f"{len(rows)} rows but {len(completions)} completions")
    if benchmark.scorer != "code":
        return [_score_answer(benchmark, row, text) for row, text in zip(rows, completions)]
    # The program must reach its last line: a completion that exits early with status 0 (skipping the
    # tests) never prints this per-run token, so it does not pass.
    token = f"opdlm-tests-done-{secrets.token_hex(8)}"
    programs = [f"{benchmark.program(row, text)}\nprint({token!r})\n" for row, text in zip(rows, completions)]
    results = run_programs(programs, limits=code_limits, workers=code_workers, allow_unsandboxed=allow_unsandboxed)
    scores = []
    for r in results:
        passed = r.passed and token in r.stdout_tail
        status = "failed" if r.passed and not passed else r.status
        detail = (
            None
            if passed
            else (
                r.stderr_tail[-500:]
                or ("exited before the tests finished" if r.passed else f"exit status {r.returncode}")
            )
        )
        scores.append(SampleScore(passed, None, status, detail))
    return scores


def read_completions(path: str | Path, rows: list[Row]) -> tuple[list[Row], list[str]]:
    """Pair each line of a completions JSONL file with its benchmark row.

    Each line is a JSON object with the task id (``id`` or ``task_id``) and the completion text
    (``completion``, ``response`` or ``text``). Only the listed tasks are scored, in file order.

    Raises:
        OpdlmError: a missing file, bad JSON, missing key, unknown or repeated task id, or no lines;
            the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise OpdlmError(f"completions file not found: {path}")
    by_id = {row.id: row for row in rows}
    paired_rows, texts, seen = [], [], set()
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OpdlmError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise OpdlmError(f"{where}: expected a JSON object with an id and a completion")
        task_id = next((str(rec[k]) for k in ID_KEYS if rec.get(k) is not None), None)
        text = next((rec[k] for k in COMPLETION_KEYS if rec.get(k) is not None), None)
        if task_id is None:
            raise OpdlmError(f"{where}: missing task id (one of {', '.join(ID_KEYS)})")
        if not isinstance(text, str):
            raise OpdlmError(f"{where}: missing completion text (one of {', '.join(COMPLETION_KEYS)})")
        if task_id not in by_id:
            example = next(iter(by_id), "")
            raise OpdlmError(f"{where}: unknown task id {task_id!r} for this benchmark (ids look like {example!r})")
        if task_id in seen:
            raise OpdlmError(f"{where}: task id {task_id!r} appears twice")
        seen.add(task_id)
        paired_rows.append(by_id[task_id])
        texts.append(text)
    if not texts:
        raise OpdlmError(f"completions file {path} has no lines")
    return paired_rows, texts


def score_file(benchmark: str, completions_path: str | Path, config=None, json_out: str | Path | None = None) -> dict:
    """Score a completions JSONL file against ``benchmark`` (what ``opdlm score`` runs).

    Args:
        benchmark: benchmark name; its rows (from ``config.data_dir``) give answers and tests.
        completions_path: see :func:`read_completions`.
        config: an :class:`~opdlm.config.eval.EvalConfig` (data dir, seed, code limits).
        json_out: when set, write the summary there and per-sample verdicts next to it
            (``x.json`` -> ``x.samples.jsonl``).

    Returns:
        ``{"benchmark", "completions", "n", "correct", "accuracy", "samples_path"}``.
    """
    from opdlm.config.eval import EvalConfig
    from opdlm.eval.benchmarks import get_benchmark, load_benchmark
    from opdlm.eval.metrics import samples_path_for
    from opdlm.fsutil import atomic_write_text, check_output_location

    if json_out is not None:  # neither the summary nor its samples file may land on what is scored
        for flag, target in (("--json-out", json_out), ("--json-out's samples file", samples_path_for(json_out))):
            check_output_location(target, {"--completions": completions_path}, flag=flag, replaces=False)

    config = config or EvalConfig()
    bench = get_benchmark(benchmark)
    rows, texts = read_completions(completions_path, load_benchmark(benchmark, config.data_dir, seed=config.seed))
    limits = SandboxLimits(timeout_s=config.code_timeout_s, memory_bytes=config.code_memory_mb * 1024**2)
    scores = score_completions(
        bench,
        rows,
        texts,
        code_limits=limits,
        code_workers=config.code_workers,
        allow_unsandboxed=config.allow_unsandboxed,
    )
    correct = sum(s.correct for s in scores)
    summary = {
        "benchmark": bench.name,
        "completions": str(completions_path),
        "n": len(scores),
        "correct": correct,
        "accuracy": round(correct / len(scores), 6),
        "samples_path": None,
    }
    if json_out is not None:
        samples = samples_path_for(json_out)
        lines = [
            json.dumps({"id": r.id, "completion": t, "answer": r.answer, **s.to_dict()}, ensure_ascii=False)
            for r, t, s in zip(rows, texts, scores)
        ]
        atomic_write_text(samples, "".join(line + "\n" for line in lines))
        summary["samples_path"] = str(samples)
        atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")
    return summary
