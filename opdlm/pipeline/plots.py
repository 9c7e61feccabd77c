"""Training curves from the trainer's ``metrics.jsonl``: a CSV (DVC plots) and a PNG (people)."""

from __future__ import annotations

import csv
from pathlib import Path

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
