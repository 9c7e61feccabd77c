"""lm-eval tasks named in a recipe (``eval.lm_eval_tasks``), run through lm-eval's Python API.

The pipeline's eval stage calls :func:`run_lm_eval` after the built-in benchmarks, with the same
sampler settings, batch size, seed, device and row limit, and logs :func:`flat_metrics` next to the
built-in scores.
"""

from __future__ import annotations

import json
from pathlib import Path

from opdlm.config.eval import EvalConfig
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import ConfigError
from opdlm.fsutil import atomic_write_text
from opdlm.lmeval.args import SAMPLER_ARGS

SUMMARY_FILE = "lm_eval.json"
FOLDER = "lm_eval"


def model_args_for(
    model_dir: str | Path,
    config: EvalConfig,
    sampler: SamplerConfig | None,
    requests_jsonl: Path,
    enable_thinking: bool | None = None,
) -> dict:
    """``--model_args`` equivalent to ``opdlm eval`` with ``config`` and ``sampler`` (the recipe's).

    Batch size and device travel as lm-eval's own ``batch_size`` / ``device`` arguments.

    Every sampler field is passed, so a student decodes with the recipe's settings and a teacher
    with its temperature / top-k / top-p, as :func:`opdlm.eval.harness.sampler_config` does.
    """
    args: dict = {
        "pretrained": str(model_dir),
        "seed": config.seed,
        "requests_jsonl": str(requests_jsonl),
        "enable_thinking": enable_thinking,
    }
    if sampler is not None:
        args.update({k: getattr(sampler, k) for k in SAMPLER_ARGS})
        args["max_gen_toks"] = sampler.max_new_tokens
    if config.max_new_tokens is not None:
        args["max_gen_toks"] = config.max_new_tokens  # a request's own max_gen_toks still wins
    return args


def flat_metrics(results: dict) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm-eval's ``results["results"]``, numbers only.

    lm-eval keys metrics ``"name,filter"``; the default filter ``none`` is dropped and any other
    becomes a suffix (``exact_match/strict-match``), since MLflow metric names cannot hold commas.
    """
    out: dict[str, dict[str, float]] = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, filt = key.split(",", 1)
            out.setdefault(task, {})[name if filt == "none" else f"{name}/{filt}"] = float(value)
    return out


def task_manager_for(tasks: list[str], include_path: str | None, where: str):
    """lm-eval's ``TaskManager`` holding every name of ``tasks`` (from ``include_path`` alone when that has them all).

    Raises:
        ConfigError: lm-eval is not installed, or a task name is unknown (named, with the close matches).
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        from opdlm.lmeval.cli import INSTALL_HINT

        raise ConfigError(INSTALL_HINT) from None
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):  # indexing lm-eval's own tasks takes ~10 s
        manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        from opdlm.lmeval.cli import unknown_task_message

        raise ConfigError(unknown_task_message(unknown[0], list(manager.all_tasks), where))
    return manager


def run_lm_eval(
    model_dir: str | Path,
    tasks: list[str],
    config: EvalConfig,
    sampler: SamplerConfig | None,
    out_dir: str | Path,
    include_path: str | None = None,
    enable_thinking: bool | None = None,
) -> dict:
    """Score ``model_dir`` on lm-eval ``tasks``; write lm-eval's results, samples and the request speeds.

    Writes ``OUT/lm_eval/results.json`` (lm-eval's own), ``OUT/lm_eval/samples_<task>.jsonl``,
    ``OUT/lm_eval/requests.jsonl`` (one line of speed per request) and, last,
    ``OUT/lm_eval.json``: ``{"metrics": {task: {metric: value}}, "speed": {...}}``.
    ``enable_thinking`` is the recipe's ``convert.enable_thinking``, as for the built-in benchmarks.

    Raises:
        ConfigError: lm-eval is not installed, or a task name is unknown.
    """
    try:
        import lm_eval
        from lm_eval.utils import handle_non_serializable
    except ImportError:
        from opdlm.lmeval.cli import INSTALL_HINT

        raise ConfigError(INSTALL_HINT) from None
    import opdlm.lmeval  # noqa: F401  (registers the model type)

    folder = Path(out_dir) / FOLDER
    manager = task_manager_for(tasks, include_path, "eval.lm_eval_tasks")
    results = lm_eval.simple_evaluate(
        model="opdlm",
        model_args=model_args_for(model_dir, config, sampler, folder / "requests.jsonl", enable_thinking),
        tasks=list(tasks),
        task_manager=manager,
        limit=config.limit,
        log_samples=True,
        batch_size=config.batch_size,
        device=config.device,
    )
    samples = results.pop("samples", {})
    for task, rows in samples.items():
        text = "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(folder / f"samples_{task}.jsonl", text)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    summary = {"metrics": flat_metrics(results), "speed": results["config"]["opdlm"]}
    atomic_write_text(Path(out_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
