"""The evaluation harness: load a model, decode a benchmark in batches, score it, write the results.

:func:`evaluate` is the one call the CLI and the pipeline make. :func:`evaluate_rows` does the work
for an already loaded model, so a sweep loads the model once and decodes under many settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from opdlm.config.eval import EvalConfig
from opdlm.config.sampler import SamplerConfig
from opdlm.data.prompting import encode_prompts
from opdlm.data.schema import Row
from opdlm.errors import ConfigError, OpdlmError
from opdlm.eval.benchmarks import Benchmark, get_benchmark, load_benchmark
from opdlm.eval.metrics import EvalResult, SampleRecord, samples_path_for, summarize, with_retention
from opdlm.eval.runners import ModelRunner, load_runner
from opdlm.eval.sandbox import SandboxLimits, check_sandbox
from opdlm.eval.scoring import score_completions
from opdlm.fsutil import atomic_write_text


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


def decode_batches(
    runner: ModelRunner,
    prompt_ids: list[list[int]],
    cfg: SamplerConfig,
    batch_size: int,
    seed: int,
    progress: bool = False,
):
    """Decode tokenised prompts in batches of similar length (less padding); batch ``b`` samples with ``seed + b``.

    Yields:
        ``(row_indices, SampleBatch, seconds)`` per batch: which prompts it held, what they decoded
        to (in ``row_indices`` order) and the batch's wall-clock generation time.
    """
    from opdlm.progress import track

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for b, batch in enumerate(track(batches, "decode", "batch", enabled=progress)):
        start = time.perf_counter()
        out = runner.generate([prompt_ids[i] for i in batch], cfg, seed=seed + b)
        yield batch, out, time.perf_counter() - start


def _decode(runner: ModelRunner, prompts: list[str], cfg: SamplerConfig, batch_size: int, seed: int, progress: bool):
    """Decode every prompt; returns per-row ``(text, ids, steps, forwards, finished)`` and generation seconds."""
    outputs: list[tuple | None] = [None] * len(prompts)
    seconds = 0.0
    for batch, out, batch_s in decode_batches(
        runner, encode_prompts(runner.tokenizer, prompts), cfg, batch_size, seed, progress
    ):
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
    outputs, seconds = _decode(runner, prompts, cfg, config.batch_size, config.seed, progress)
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


def write_run(result: EvalResult, records: list[SampleRecord], json_path: str | Path) -> EvalResult:
    """Write the result to ``json_path`` and one line per sample to :func:`samples_path_for` (each
    atomically); returns the result with ``samples_path`` set."""
    samples = samples_path_for(json_path)
    atomic_write_text(samples, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
    result.samples_path = str(samples)
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
        teacher_result: the teacher's result on the same benchmark; adds ``retention``.
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
    if teacher_result is not None:
        try:
            result = with_retention(result, teacher_result)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if json_out is not None:
        result = write_run(result, records, json_out)
    return result
