"""The run's figures: training curves from the trainer's ``metrics.jsonl`` (a CSV for DVC plots and a PNG for
people), and the sweep's Pareto plots with the teacher and the shipped operating point."""

from __future__ import annotations

import csv
from pathlib import Path

from opdlm.config.recipe import Recipe
from opdlm.pipeline.training_metrics import read_metric_steps

CURVE_COLUMNS = (
    "loss",
    "grad_norm",
    "lr",
    "length_cap",
    "mean_response_tokens",
    "tokens_per_step",
    "eos_rate",
    "cumulative_train_tokens",
)
PANELS = (
    ("loss", "forward KL"),
    ("tokens_per_step", "rollout tokens per step"),
    ("mean_response_tokens", "mean rollout length (cap dashed)"),
    ("lr", "learning rate"),
)


def write_training_curves(metrics_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``train_curves.csv`` (one row per rollout step) and ``train_curves.png`` into ``out_dir``.

    Raises:
        FileNotFoundError: ``metrics_path`` has no complete line.
    """
    steps = read_metric_steps(metrics_path)
    if not steps:
        raise FileNotFoundError(f"no training metrics in {metrics_path}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "train_curves.csv", out_dir / "train_curves.png"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("step", *CURVE_COLUMNS))
        for step, m in steps:
            writer.writerow((step, *(m.get(c, "") for c in CURVE_COLUMNS)))
    _plot(steps, png_path)
    return csv_path, png_path


def _plot(steps: list[tuple[int, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6), dpi=110)
    x = [s for s, _ in steps]
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.plot(x, [m.get(key, float("nan")) for _, m in steps], marker="o", ms=2)
        if key == "mean_response_tokens":
            ax.plot(x, [m.get("length_cap", float("nan")) for _, m in steps], "k--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("rollout step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def draw_sweep_plots(
    recipe: Recipe,
    sweep_dir: str | Path,
    student_results: dict[str, dict],
    teacher_results: dict[str, dict],
    plots_dir: str | Path | None = None,
) -> list[Path]:
    """Redraw each benchmark's sweep plot with the run's facts the sweep alone does not know, and copy it into
    ``plots_dir`` (when given).

    The sweep (cached on the student alone) drew accuracy against tokens per step over its grid; here the plot
    also gets the teacher's point, the operating point the model ships with (the recipe's ``sampler``, scored
    by the eval stage) and a title naming the registered model and the benchmark.

    Returns:
        the folders written into ``plots_dir``: ``<benchmark>/sweep_pareto.png`` each.
    """
    from opdlm.eval.sweep import PLOT_FILE, TABLE_FILE, Reference, plot_pareto, read_sweep, sweep_title

    sampler = recipe.sampler
    mode = f"threshold {sampler.threshold:g}" if sampler.remasking == "dynamic" else "static remasking"
    model = recipe.registry.model_name or f"opdlm-{recipe.name}"
    written = []
    for bench, student in student_results.items():
        table = Path(sweep_dir) / bench / TABLE_FILE
        if not table.is_file():
            continue
        summary, points = read_sweep(table)
        teacher = teacher_results.get(bench)
        teacher_ref = (
            Reference("teacher (autoregressive)", teacher["accuracy"], teacher["tokens_per_step"]) if teacher else None
        )
        shipped = Reference(
            f"shipped setting: block size {sampler.block_size}, {mode}", student["accuracy"], student["tokens_per_step"]
        )
        title = sweep_title(model, bench, summary.get("n", student.get("n", 0)))
        plot = plot_pareto(points, table.parent / PLOT_FILE, title, teacher_ref, shipped)
        if plots_dir is None:
            continue
        copy = Path(plots_dir) / bench / PLOT_FILE
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(f".{copy.name}.tmp")
        tmp.write_bytes(plot.read_bytes())
        tmp.replace(copy)
        written.append(copy.parent)
    return written
