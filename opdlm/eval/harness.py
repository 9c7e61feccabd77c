"""The evaluation harness: load a model, decode a benchmark in batches, score it, write the results.

:func:`evaluate` is the one call the CLI and the pipeline make. :func:`evaluate_rows` does the work
for an already loaded model, so a sweep loads the model once and decodes under many settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from opdlm.config.eval import EvalConfig
from opdlm.config.request import SEED_MAX
from opdlm.config.sampler import SamplerConfig
from opdlm.data.prompting import encode_prompts
from opdlm.data.schema import Row
from opdlm.errors import ConfigError, OpdlmError
from opdlm.eval.benchmarks import Benchmark, get_benchmark, load_benchmark
from opdlm.eval.metrics import EvalResult, SampleRecord, samples_path_for, summarize, with_retention
from opdlm.eval.runners import ModelRunner, load_runner
from opdlm.eval.sandbox import SandboxLimits, check_sandbox
from opdlm.eval.scoring import score_completions
from opdlm.fsutil import atomic_write_text, published_path


def sampler_config(
    runner: ModelRunner,
    max_new_tokens: int,
    threshold: float | None = None,
    block_size: int | None = None,
    base: SamplerConfig | None = None,
) -> SamplerConfig:
    """The decoding settings: ``base`` (default: the student's stored settings) with the given overrides.

    Setting ``threshold`` selects dynamic remasking (the threshold means nothing under static). A
    causal LM decodes autoregressively up to ``max_new_tokens`` with ``base``'s temperature, top-k
    and top-p (greedy when there is no ``base``); threshold and block size do not apply to it.

    Raises:
        ConfigError: the combination does not validate (e.g. a block size below the steps per block).
    """
    try:
        if runner.sampler_defaults is None:
            greedy = SamplerConfig(temperature=0.0)
            return (base or greedy).with_overrides(max_new_tokens=max_new_tokens)
        return (base or runner.sampler_defaults).with_overrides(
            max_new_tokens=max_new_tokens,
            threshold=threshold,
            block_size=block_size,
            remasking="dynamic" if threshold is not None else None,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        from pydantic import ValidationError

        from opdlm.config.base import format_validation_error

        if isinstance(exc, ValidationError):
            raise ConfigError(format_validation_error(exc, SamplerConfig, "sampler settings")) from None
        raise


def build_prompts(runner: ModelRunner, benchmark: Benchmark, rows: list[Row]) -> list[str]:
    """Prompt texts as the model sees them (chat template, in the model's thinking mode, when it has one)."""
    return [runner.format_prompt(benchmark.question_text(r), r.domain, math_suffix=benchmark.math_suffix) for r in rows]


# A student's decode chunk, in batches: its rows queue for the batch's slots (the block sampler's
# continuous batching); larger chunks leave fewer half-empty tails, smaller ones report progress sooner.
QUEUED_BATCHES = 8


def decode_batches(
    runner: ModelRunner,
    prompt_ids: list[list[int]],
    cfg: SamplerConfig,
    batch_size: int,
    seed: int,
    progress: bool = False,
):
    """Decode tokenised prompts in chunks of similar length (less padding); chunk ``b`` samples with ``seed + b``.

    A causal LM decodes ``batch_size`` prompts per chunk. A student's chunk holds
    ``QUEUED_BATCHES * batch_size`` prompts decoded ``batch_size`` rows at a time: a row that
    finishes hands its slot to the next queued prompt, so the batch stays full until the chunk's end.

    Yields:
        ``(row_indices, SampleBatch, seconds)`` per chunk: which prompts it held, what they decoded
        to (in ``row_indices`` order) and the chunk's wall-clock generation time.
    """
    from opdlm.progress import track

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    chunk = batch_size * (QUEUED_BATCHES if runner.kind == "student" else 1)
    batches = [order[i : i + chunk] for i in range(0, len(order), chunk)]
    for b, batch in enumerate(track(batches, "decode", "batch", enabled=progress)):
        start = time.perf_counter()
        # batch b's seed, wrapped into the range torch's generator takes (a seed near the top stays valid)
        seed_b = (seed + b) % (SEED_MAX + 1)
        out = runner.generate([prompt_ids[i] for i in batch], cfg, seed=seed_b, max_batch=batch_size)
        yield batch, out, time.perf_counter() - start


def _decode(
    runner: ModelRunner,
    prompts: list[str],
    cfg: SamplerConfig,
    batch_size: int,
    seed: int,
    progress: bool,
    what: Callable[[int], str] | None = None,
):
    """Decode every prompt; returns per-row ``(text, ids, steps, forwards, finished)`` and generation seconds.

    Every prompt plus ``cfg.max_new_tokens`` is checked against the model's positions first
    (:func:`~opdlm.config.request.check_prompt_tokens`; ``what(i)`` names prompt ``i`` in the error), so
    nothing is decoded when one row cannot fit.
    """
    from opdlm.config.request import check_prompt_tokens

    prompt_ids = encode_prompts(runner.tokenizer, prompts)
    if runner.limits is not None:
        check_prompt_tokens(prompt_ids, cfg, runner.limits, what=what)
    outputs: list[tuple | None] = [None] * len(prompts)
    seconds = 0.0
    for batch, out, batch_s in decode_batches(runner, prompt_ids, cfg, batch_size, seed, progress):
        seconds += batch_s
        for k, i in enumerate(batch):
            outputs[i] = (out.texts[k], out.response_ids[k], out.num_steps(k), out.num_forwards[k], out.finished[k])
    return outputs, seconds


def evaluate_rows(
    runner: ModelRunner,
    benchmark: Benchmark,
    rows: list[Row],
    config: EvalConfig,
    cfg: SamplerConfig,
    progress: bool = False,
) -> tuple[EvalResult, list[SampleRecord]]:
    """Decode and score ``rows`` with a loaded model under sampler settings ``cfg``."""
    prompts = build_prompts(runner, benchmark, rows)
    outputs, seconds = _decode(
        runner,
        prompts,
        cfg,
        config.batch_size,
        config.seed,
        progress,
        what=lambda i: f"{benchmark.name} row {rows[i].id or i}",
    )
    limits = SandboxLimits(timeout_s=config.code_timeout_s, memory_bytes=config.code_memory_mb * 1024**2)
    scores = score_completions(
        benchmark,
        rows,
        [o[0] for o in outputs],
        code_limits=limits,
        code_workers=config.code_workers,
        allow_unsandboxed=config.allow_unsandboxed,
    )
    records = [
        SampleRecord(
            id=row.id or str(i),
            prompt=prompt,
            completion=text,
            answer=row.answer,
            extracted=score.extracted,
            correct=score.correct,
            status=score.status,
            num_tokens=len(ids),
            num_steps=steps,
            tokens_per_step=round(len(ids) / steps, 4) if steps else 0.0,
            num_forwards=forwards,
            finished=finished,
            token_ids=list(ids),
            skill=row.skill,
        )
        for i, (row, prompt, (text, ids, steps, forwards, finished), score) in enumerate(
            zip(rows, prompts, outputs, scores)
        )
    ]
    result = summarize(
        records,
        benchmark=benchmark.name,
        model=str(runner.model_dir),
        model_kind=runner.kind,
        generation_s=seconds,
        max_new_tokens=cfg.max_new_tokens,
        seed=config.seed,
        sampler=cfg.model_dump() if runner.kind == "student" else None,
    )
    return result, records


def _teacher_records(teacher: dict, records: list[SampleRecord]) -> list[dict] | None:
    """The teacher's per-sample records in the order of ``records`` (None: its result has no token ids).

    Raises:
        ConfigError: the teacher was scored on other rows.
    """
    path = teacher.get("samples_path")
    if not path or not Path(path).is_file():
        return None
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or any("token_ids" not in r for r in rows):
        return None  # written before completions carried their token ids
    by_id = {r["id"]: r for r in rows}
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise ConfigError(
            f"teacher result {path} scored other rows ({len(missing)} of {len(records)} missing, e.g. id "
            f"{missing[0]!r}): "
            "score teacher and student with the same eval.limit and seed"
        )
    return [by_id[r.id] for r in records]


def add_teacher_retention(
    runner: ModelRunner, result: EvalResult, records: list[SampleRecord], teacher: dict | None, device: str = "auto"
) -> EvalResult:
    """Set ``result.teacher_retention`` and each record's ``teacher_nll`` (:mod:`opdlm.eval.retention`).

    With ``teacher`` (the teacher's result dict, its samples on disk), the teacher model in
    ``teacher["model"]`` scores this model's completions on the teacher's own prompts and they are
    compared with the teacher's completions. Without it, a causal LM is its own teacher (NLL of its
    own completions, agreement 1): the reference a student's numbers are read against. A student
    without a teacher result, or a teacher result written before completions carried token ids,
    gets no retention.
    """
    from opdlm.eval.retention import completion_nll, retention_metrics

    if teacher is None:
        if runner.kind != "causal_lm":
            return result
        model, tokenizer, reference = runner.model, runner.tokenizer, [r.to_dict() for r in records]
    else:
        reference = _teacher_records(teacher, records)
        if reference is None:
            return result
        from opdlm.models.student import load_causal_lm

        model, tokenizer = load_causal_lm(teacher["model"], device=device)
    prompt_ids = encode_prompts(tokenizer, [r["prompt"] for r in reference])
    teacher_ids = [r["token_ids"] for r in reference]
    student_ids = [r.token_ids for r in records]
    student_nll = completion_nll(model, prompt_ids, student_ids)
    teacher_nll = [r.get("teacher_nll") for r in reference]
    if teacher is None:
        teacher_nll = student_nll
    elif any(t is None for t in teacher_nll):
        teacher_nll = completion_nll(model, prompt_ids, teacher_ids)
    for record, nll in zip(records, student_nll):
        record.teacher_nll = [round(x, 5) for x in nll]
    result.teacher_retention = retention_metrics(student_ids, teacher_ids, student_nll, teacher_nll).to_dict()
    return result


def write_run(result: EvalResult, records: list[SampleRecord], json_path: str | Path) -> EvalResult:
    """Write the result to ``json_path`` and one line per sample to :func:`samples_path_for` (each
    atomically); returns the result with ``samples_path`` set (where the file is once a folder being
    published, :func:`opdlm.fsutil.atomic_dir`, is in place)."""
    samples = samples_path_for(json_path)
    atomic_write_text(samples, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
    result.samples_path = str(published_path(samples))
    atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def read_result(path: str | Path) -> dict:
    """A result JSON written by :func:`write_run` (e.g. the teacher's, for retention).

    Raises:
        OpdlmError: missing file, invalid JSON, or no ``benchmark`` / ``accuracy`` in it.
    """
    path = Path(path)
    if not path.is_file():
        raise OpdlmError(f"result file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OpdlmError(f"{path}: not valid JSON ({exc.msg})") from None
    missing = [k for k in ("benchmark", "accuracy") if not isinstance(data, dict) or k not in data]
    if missing:
        raise OpdlmError(f"{path}: not an evaluation result (no {missing[0]!r} field)")
    return data


def prepare(
    model_dir: str | Path, benchmark: str, config: EvalConfig, enable_thinking: bool | None = None
) -> tuple[ModelRunner, Benchmark, list[Row]]:
    """Check the sandbox (code benchmarks), load the rows, then the model (cheap failures first).

    ``enable_thinking``: the recipe's ``convert.enable_thinking`` (see :func:`load_runner`).
    """
    bench = get_benchmark(benchmark)
    if bench.scorer == "code":
        check_sandbox(config.allow_unsandboxed)  # refuse before spending time on generation
    rows = load_benchmark(benchmark, config.data_dir, config.limit, config.seed)
    return load_runner(model_dir, device=config.device, enable_thinking=enable_thinking), bench, rows


def evaluate(
    model_dir: str | Path,
    benchmark: str,
    config: EvalConfig | None = None,
    *,
    sampler: SamplerConfig | None = None,
    threshold: float | None = None,
    block_size: int | None = None,
    json_out: str | Path | None = None,
    teacher_result: EvalResult | dict | None = None,
    progress: bool = False,
    enable_thinking: bool | None = None,
) -> EvalResult:
    """Score the model in ``model_dir`` on ``benchmark``.

    A converted student decodes with the block-diffusion sampler; any other causal LM decodes
    autoregressively, so a teacher is scored by the same code.

    Args:
        model_dir: a converted student or a plain Hugging Face causal LM directory.
        benchmark: a name from :data:`opdlm.eval.benchmarks.BENCHMARK_NAMES`.
        config: limit, batch size, data directory, code-execution limits (defaults: ``EvalConfig()``).
        sampler: decoding settings (e.g. a recipe's ``sampler`` section); default: the student's
            stored settings. ``threshold`` / ``block_size`` override either.
        json_out: when set, write the result there and the per-sample JSONL next to it.
        teacher_result: the teacher's result on the same benchmark; adds ``retention`` and (with
            ``config.retention`` and the teacher's samples on disk) ``teacher_retention``.
        enable_thinking: the recipe's ``convert.enable_thinking``; None: a student's stored value
            (false for a causal LM). A student stored with the other value is refused.

    Returns:
        The run's :class:`EvalResult`.
    """
    config = config or EvalConfig()
    runner, bench, rows = prepare(model_dir, benchmark, config, enable_thinking)
    max_new_tokens = config.max_new_tokens or (sampler.max_new_tokens if sampler else bench.max_new_tokens)
    cfg = sampler_config(runner, max_new_tokens, threshold, block_size, base=sampler)
    result, records = evaluate_rows(runner, bench, rows, config, cfg, progress=progress)
    if config.retention:
        teacher = teacher_result.to_dict() if isinstance(teacher_result, EvalResult) else teacher_result
        result = add_teacher_retention(runner, result, records, teacher, config.device)
    if teacher_result is not None:
        try:
            result = with_retention(result, teacher_result)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if json_out is not None:
        result = write_run(result, records, json_out)
    return result
