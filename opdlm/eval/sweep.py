"""The parallelism sweep: accuracy against tokens per step over thresholds x block sizes (METHOD §7).

The student is loaded once and decodes the same rows under every (block size, threshold) of the
grid with dynamic remasking. The table is written as JSON with each point's Pareto flag, and a PNG
plots accuracy against tokens per step with the Pareto front drawn through the points that no other
point beats on both axes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from opdlm.config.eval import EvalConfig
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import ConfigError
from opdlm.eval.harness import evaluate_rows, prepare, sampler_config, write_run
from opdlm.fsutil import atomic_dir, atomic_write_text, published_path

TABLE_FILE = "sweep.json"
PLOT_FILE = "sweep_pareto.png"


@dataclass
class SweepPoint:
    """One decoding setting of the grid and what it scored."""

    block_size: int
    threshold: float
    accuracy: float
    tokens_per_step: float
    mean_forwards: float
    tokens_per_second: float
    mean_length: float
    n: int
    pareto: bool = False
    result_path: str | None = None


def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """For ``(accuracy, tokens_per_step)`` pairs, whether each is on the Pareto front.

    A point is on the front when no other point is at least as good on both axes and strictly
    better on one (higher is better on both).
    """
    flags = []
    for i, (acc_i, tps_i) in enumerate(points):
        dominated = any(
            acc_j >= acc_i and tps_j >= tps_i and (acc_j > acc_i or tps_j > tps_i)
            for j, (acc_j, tps_j) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


@dataclass(frozen=True)
class Reference:
    """A point drawn beside the sweep: the teacher, or the operating point the model ships with."""

    label: str
    accuracy: float
    tokens_per_step: float


def sweep_title(model: str, benchmark: str, n: int) -> str:
    """The plot's title: which model, on which benchmark, how many rows."""
    return f"{model} on {benchmark} ({n} rows): accuracy vs parallelism"


def model_label(model_dir: str | Path) -> str:
    """A model's name for a title: its folder, with the run folder in front when the folder only names a
    checkpoint (``step-000110``, ``final``, ``student``), which says nothing on its own."""
    import re

    path = Path(model_dir).absolute()
    if re.fullmatch(r"(step-\d+|final|student|checkpoint.*|model)", path.name) and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def plot_pareto(
    points: list[SweepPoint],
    path: str | Path,
    title: str,
    teacher: Reference | None = None,
    shipped: Reference | None = None,
) -> Path:
    """Accuracy vs tokens per step, one marker per block size labelled with its threshold, the Pareto front as
    a line, and (when given) the teacher and the operating point the model ships with; PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for block_size in sorted({p.block_size for p in points}):
        group = [p for p in points if p.block_size == block_size]
        ax.scatter(
            [p.tokens_per_step for p in group],
            [p.accuracy for p in group],
            label=f"student, block size {block_size}",
            zorder=3,
        )
        for p in group:
            ax.annotate(
                f"{p.threshold:g}",
                (p.tokens_per_step, p.accuracy),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    front = sorted((p for p in points if p.pareto), key=lambda p: p.tokens_per_step)
    ax.plot(
        [p.tokens_per_step for p in front], [p.accuracy for p in front], "k--", lw=1, label="Pareto front", zorder=2
    )
    if shipped is not None:
        ax.scatter(
            [shipped.tokens_per_step],
            [shipped.accuracy],
            s=220,
            facecolors="none",
            edgecolors="crimson",
            linewidths=2,
            label=shipped.label,
            zorder=4,
        )
    if teacher is not None:
        ax.scatter(
            [teacher.tokens_per_step],
            [teacher.accuracy],
            marker="*",
            s=180,
            color="black",
            label=teacher.label,
            zorder=4,
        )
    # the numbers beside the points are not labels of anything in the legend: say what they are
    ax.plot([], [], " ", label="numbers beside points: remasking threshold")
    ax.set_xlabel("tokens per step (higher: more parallel)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def read_sweep(path: str | Path) -> tuple[dict, list[SweepPoint]]:
    """A written ``sweep.json``: its summary (benchmark, model, n) and its points."""
    from opdlm.fsutil import read_json_object

    summary = read_json_object(path, ConfigError)
    return summary, [SweepPoint(**p) for p in summary["points"]]


def sweep(
    model_dir: str | Path,
    benchmark: str,
    config: EvalConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    sampler: SamplerConfig | None = None,
    progress: bool = False,
    enable_thinking: bool | None = None,
    overwrite: bool = False,
) -> list[dict]:
    """Decode ``benchmark`` with the student in ``model_dir`` at every point of the sweep grid.

    Args:
        model_dir: a converted student (a causal LM has no thresholds or blocks to sweep).
        benchmark: benchmark name.
        config: the grid (``sweep_thresholds`` x ``sweep_block_sizes``), limit, batch size, ...
        out_dir: when set, writes ``sweep.json`` (the table), ``sweep_pareto.png`` and each point's
            result and per-sample JSONL under ``points/``. The folder is published whole once the
            last point is scored (:func:`opdlm.fsutil.atomic_dir`): an interrupted sweep leaves no
            folder, never a partial one. An existing non-empty one is replaced only with ``overwrite``.
        overwrite: replace an existing non-empty ``out_dir``.
        sampler: base decoding settings (default: the student's stored ones); every point uses
            dynamic remasking with its own threshold and block size.
        enable_thinking: the recipe's ``convert.enable_thinking`` (None: the student's stored value).

    Returns:
        The table: one dict per point (fields of :class:`SweepPoint`), block size then threshold
        in grid order.
    """
    config = config or EvalConfig()
    if out_dir is None:
        return _sweep_points(model_dir, benchmark, config, None, sampler, progress, enable_thinking)
    with atomic_dir(out_dir, overwrite=overwrite, inputs={"--model": model_dir}, flag="--out-dir") as tmp:
        return _sweep_points(model_dir, benchmark, config, tmp, sampler, progress, enable_thinking)


def _sweep_points(
    model_dir: str | Path,
    benchmark: str,
    config: EvalConfig,
    out: Path | None,
    sampler: SamplerConfig | None,
    progress: bool,
    enable_thinking: bool | None,
) -> list[dict]:
    """:func:`sweep`'s work, writing into ``out`` (the folder being published; None: nothing written)."""
    runner, bench, rows = prepare(model_dir, benchmark, config, enable_thinking)
    if runner.kind != "student":
        raise ConfigError(
            f"--sweep needs a converted student; {model_dir} is a plain causal LM (no threshold or block size)"
        )
    max_new_tokens = config.max_new_tokens or (sampler.max_new_tokens if sampler else bench.max_new_tokens)
    points: list[SweepPoint] = []
    for block_size in config.sweep_block_sizes:
        for threshold in config.sweep_thresholds:
            cfg = sampler_config(runner, max_new_tokens, threshold, block_size, base=sampler)
            result, records = evaluate_rows(runner, bench, rows, config, cfg, progress=progress)
            json_path = out / "points" / f"{bench.name}_B{block_size}_t{threshold:g}.json" if out is not None else None
            if json_path is not None:
                write_run(result, records, json_path)
            points.append(
                SweepPoint(
                    block_size=block_size,
                    threshold=threshold,
                    accuracy=result.accuracy,
                    tokens_per_step=result.tokens_per_step,
                    mean_forwards=result.mean_forwards,
                    tokens_per_second=result.tokens_per_second,
                    mean_length=result.mean_length,
                    n=result.n,
                    result_path=str(published_path(json_path)) if json_path is not None else None,
                )
            )
    for point, flag in zip(points, pareto_flags([(p.accuracy, p.tokens_per_step) for p in points])):
        point.pareto = flag
    table = [asdict(p) for p in points]
    if out is not None:
        summary = {"benchmark": bench.name, "model": str(model_dir), "n": len(rows), "points": table}
        atomic_write_text(out / TABLE_FILE, json.dumps(summary, indent=2) + "\n")
        plot_pareto(points, out / PLOT_FILE, sweep_title(model_label(model_dir), bench.name, len(rows)))
    return table
