"""``opdlm eval``: score a student (block-diffusion sampler) or a plain causal LM on a benchmark."""

from __future__ import annotations

from pathlib import Path

import typer


def _number_list(text: str | None, flag: str, kind: type = float) -> list | None:
    """``"1.0,0.9"`` -> ``[1.0, 0.9]``; a bad item is a one-line error naming the flag."""
    if text is None:
        return None
    from opdlm.errors import ConfigError

    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ConfigError(f"{flag}: expected comma-separated {noun} (got {text!r})") from None


def _eval_config(config: Path | None, overrides: list[str], flags: dict):
    """The recipe's ``eval`` section (or the defaults), then ``key=value`` overrides, then the flags.

    Returns ``(eval_config, sampler, enable_thinking)``; the last two are None without a recipe
    (a student then uses its stored thinking mode, a causal LM non-thinking).
    """
    from opdlm.config.base import apply_overrides, validate_config
    from opdlm.config.eval import EvalConfig

    base: dict = {}
    sampler, enable_thinking = None, None
    if config is not None:
        from opdlm.config.recipe import load_recipe

        recipe = load_recipe(config, trains=False)  # only its eval, sampler and convert sections
        base, sampler, enable_thinking = recipe.eval.model_dump(), recipe.sampler, recipe.convert.enable_thinking
    data = apply_overrides(base, overrides)
    data.update({k: v for k, v in flags.items() if v is not None})
    return validate_config(EvalConfig, data, source="eval options"), sampler, enable_thinking


def _check_length_cap(model: Path, max_new_tokens: int, block_size: int | None, flag: str | None) -> None:
    """Refuse a generation cap that leaves no room for a prompt in the model's positions (config.json only).

    Every prompt is checked against it again, tokenised, before decoding starts (the harness).
    """
    from opdlm.config.request import check_max_new_tokens
    from opdlm.config.sampler import SamplerConfig
    from opdlm.models.student import model_limits, stored_sampler_defaults

    limits = model_limits(model)
    block = block_size if (block_size or 0) >= 1 else None  # a bad --block-size is refused with the sampler's
    block = block or (stored_sampler_defaults(model).block_size if limits.block_causal else 1)
    cfg = SamplerConfig(max_new_tokens=max_new_tokens, block_size=block, denoise_steps_per_block=1)
    check_max_new_tokens(cfg, limits, name=lambda field: flag or f"eval.{field}")


def _summary(result) -> str:
    from opdlm.numbers import show_fraction, show_rate

    line = (
        f"{result.benchmark}: accuracy {show_fraction(result.accuracy)} ({result.correct}/{result.n}), "
        f"{show_rate(result.tokens_per_step)} tokens/step, {show_rate(result.mean_forwards)} forwards/sample, "
        f"{show_rate(result.tokens_per_second)} tokens/s, mean length {show_rate(result.mean_length)} "
        f"[{result.model_kind}]"
    )
    if result.teacher_accuracy is not None:
        shown = "undefined (teacher scored 0)" if result.retention is None else show_fraction(result.retention)
        line += f"; teacher accuracy {show_fraction(result.teacher_accuracy)}, retention {shown}"
    r = result.teacher_retention
    if r is not None:
        line += (
            f"; teacher NLL {show_rate(r['teacher_nll'])} vs its own {show_rate(r['teacher_self_nll'])} "
            f"(ratio {show_rate(r['nll_ratio'])}), agreement {show_fraction(r['agreement'])}, "
            f"repetition {show_fraction(r['repetition'])}"
        )
    return line


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        model: Path = typer.Option(
            ..., "--model", help="A converted student or a plain Hugging Face causal LM directory."
        ),
        benchmark: str = typer.Option(
            None, "--benchmark", help="Benchmark name (default: every benchmark of the eval config)."
        ),
        config: Path = typer.Option(
            None, "--config", help="Recipe YAML: its eval section and sampler settings are used."
        ),
        limit: int = typer.Option(None, "--limit", help="Score only the first N rows."),
        threshold: float = typer.Option(None, "--threshold", help="Dynamic-remasking confidence threshold (students)."),
        block_size: int = typer.Option(None, "--block-size", help="Block size (students)."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Generation cap (default: the benchmark's)."),
        batch_size: int = typer.Option(None, "--batch-size", help="Prompts decoded together."),
        data_dir: Path = typer.Option(None, "--data-dir", help="Folder of benchmark files in their public formats."),
        seed: int = typer.Option(None, "--seed", help="Sampling seed (and GPQA option order)."),
        device: str = typer.Option(None, "--device", help="auto, cpu or cuda[:N]."),
        json_out: Path = typer.Option(
            None, "--json-out", help="Write the result JSON here and per-sample JSONL next to it."
        ),
        teacher: Path = typer.Option(
            None, "--teacher", help="Also score this teacher on the same rows and report retention."
        ),
        teacher_json: Path = typer.Option(
            None, "--teacher-json", help="The teacher's result JSON from an earlier run (retention)."
        ),
        sweep: bool = typer.Option(False, "--sweep", help="Sweep thresholds x block sizes; needs --out-dir."),
        thresholds: str = typer.Option(
            None, "--thresholds", help="Sweep thresholds, comma-separated (e.g. 1.0,0.9,0.8)."
        ),
        block_sizes: str = typer.Option(
            None, "--block-sizes", help="Sweep block sizes, comma-separated (e.g. 4,8,16)."
        ),
        out_dir: Path = typer.Option(
            None,
            "--out-dir",
            help="Write <benchmark>.json (+ samples) here; with --sweep: sweep.json, sweep_pareto.png, points/.",
        ),
        allow_unsandboxed: bool = typer.Option(
            None, "--allow-unsandboxed", help="Run code tests without bubblewrap (unsafe)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="With --sweep: replace an existing non-empty --out-dir."
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        overrides: list[str] = typer.Argument(
            None, help="key=value overrides of the eval config, e.g. code_timeout_s=5."
        ),
    ) -> None:
        """Decode a benchmark and score it: accuracy, tokens per step, forwards, tokens/s, mean length."""
        from opdlm.errors import ConfigError

        flags = {
            "limit": limit,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "seed": seed,
            "device": device,
            "data_dir": str(data_dir) if data_dir else None,
            "allow_unsandboxed": allow_unsandboxed,
            "sweep_thresholds": _number_list(thresholds, "--thresholds"),
            "sweep_block_sizes": _number_list(block_sizes, "--block-sizes", int),
            "benchmarks": [benchmark] if benchmark else None,
        }
        cfg, sampler, thinking = _eval_config(config, list(overrides or []), flags)
        if cfg.max_new_tokens is not None:  # a cap the model cannot hold fails now, not after the model loads
            _check_length_cap(model, cfg.max_new_tokens, block_size, "--max-new-tokens" if max_new_tokens else None)
        if thinking is None and teacher is not None:  # no recipe: the teacher gets the student's prompts
            from opdlm.eval.runners import stored_enable_thinking

            thinking = stored_enable_thinking(model)
        if teacher is not None and teacher_json is not None:
            raise ConfigError("give --teacher or --teacher-json, not both")
        if sweep:
            if teacher is not None or teacher_json is not None:
                raise ConfigError("--sweep scores the student only; drop --teacher / --teacher-json")
            if out_dir is None:
                raise ConfigError("--sweep writes a table and a plot: give --out-dir")
            if threshold is not None or block_size is not None:
                raise ConfigError(
                    "--sweep takes its grid from --thresholds and --block-sizes, not --threshold / --block-size"
                )
            _sweep(model, cfg, out_dir, overwrite, sampler, progress, thinking)
            return

        from opdlm.eval.harness import evaluate, read_result
        from opdlm.fsutil import check_output_location

        if json_out is not None and len(cfg.benchmarks) > 1:
            raise ConfigError("--json-out takes one benchmark; pass --benchmark NAME or use --out-dir")
        inputs = {"--model": model, "--teacher": teacher, "--teacher-json": teacher_json, "--data-dir": data_dir}
        for flag, given in (("--json-out", json_out), ("--out-dir", out_dir)):
            if given is not None:
                check_output_location(given, inputs, flag=flag, replaces=False)
        import tempfile

        teacher_loaded = read_result(teacher_json) if teacher_json is not None else None
        scratch = tempfile.TemporaryDirectory(prefix="opdlm-eval-")  # the teacher's samples, for retention
        for name in cfg.benchmarks:
            target = json_out or (out_dir / f"{name}.json" if out_dir is not None else None)
            teacher_result = teacher_loaded
            if teacher is not None:
                teacher_target = (
                    target.with_name(target.name.removesuffix(".json") + ".teacher.json")
                    if target
                    else Path(scratch.name) / f"{name}.teacher.json"
                )
                teacher_result = evaluate(
                    teacher,
                    name,
                    cfg,
                    sampler=sampler,
                    json_out=teacher_target,
                    progress=progress,
                    enable_thinking=thinking,
                )
                typer.echo(_summary(teacher_result))
            result = evaluate(
                model,
                name,
                cfg,
                sampler=sampler,
                threshold=threshold,
                block_size=block_size,
                json_out=target,
                teacher_result=teacher_result,
                progress=progress,
                enable_thinking=thinking,
            )
            typer.echo(_summary(result))
            if target is not None:
                typer.echo(f"result -> {target} (samples: {result.samples_path})")


def _sweep(model: Path, cfg, out_dir: Path, overwrite: bool, sampler, progress: bool, thinking) -> None:
    """``eval --sweep``: one sweep per benchmark into ``out_dir`` (``out_dir/<benchmark>`` for several),
    published whole once every benchmark is done: an interrupted sweep leaves no folder."""
    from opdlm.eval.sweep import PLOT_FILE, TABLE_FILE
    from opdlm.eval.sweep import sweep as run_sweep
    from opdlm.fsutil import atomic_dir
    from opdlm.numbers import show_fraction, show_rate

    def one(name: str, target: Path, shown: Path) -> list[str]:
        table = run_sweep(
            model, name, cfg, target, sampler=sampler, progress=progress, enable_thinking=thinking, overwrite=overwrite
        )
        lines = [
            f"{name} B={p['block_size']} threshold={p['threshold']:g}: accuracy {show_fraction(p['accuracy'])}, "
            f"{show_rate(p['tokens_per_step'])} tokens/step{' *' if p['pareto'] else ''}"
            for p in table
        ]
        return [*lines, f"sweep -> {shown / TABLE_FILE}, {shown / PLOT_FILE} (* = Pareto front)"]

    if len(cfg.benchmarks) == 1:
        lines = one(cfg.benchmarks[0], out_dir, out_dir)
    else:
        with atomic_dir(out_dir, overwrite=overwrite, inputs={"--model": model}, flag="--out-dir") as tmp:
            lines = [line for name in cfg.benchmarks for line in one(name, tmp / name, out_dir / name)]
    for line in lines:  # once the files they name are in place
        typer.echo(line)
