"""The study's two figures (matplotlib, Agg backend, PNG).

* ``accuracy_vs_tokens.png``: held-out accuracy against training tokens for OPD and the baseline
  (seed means with their spread, single seeds as dots, ablations as markers), teacher as reference.
* ``accuracy_vs_flops.png``: the same against training FLOPs (rollout + teacher + student).
* ``accuracy_vs_tokens_per_step.png``: accuracy against tokens per step over the sweep's thresholds,
  one line per (model, block size).
* ``heldout_retention.png``: the held-out-skill section: held-out and trained-skill retention against
  training tokens and FLOPs, one line per arm kind.
"""

from __future__ import annotations

from pathlib import Path

from opdlm.study.table import seed_means

COLORS = {"opd": "tab:blue", "mdm_sft": "tab:orange"}
LABELS = {"opd": "OPD", "mdm_sft": "masked-diffusion baseline"}
ABLATION_COLORS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _references(ax, teacher_accuracy: float, target_retention: float, untrained: float | None) -> None:
    ax.axhline(teacher_accuracy, color="black", lw=1, label=f"teacher ({100 * teacher_accuracy:.1f}%)")
    ax.axhline(
        target_retention * teacher_accuracy,
        color="black",
        lw=1,
        ls=":",
        label=f"{100 * target_retention:.0f}% of teacher",
    )
    if untrained is not None:
        ax.axhline(untrained, color="gray", lw=1, ls="--", label=f"untrained student ({100 * untrained:.1f}%)")


AXIS_LABELS = {
    "training_tokens": ("training tokens (response tokens trained on)", "Accuracy vs training tokens"),
    "flops": ("training FLOPs (rollout + teacher + student)", "Accuracy vs training FLOPs"),
}


def plot_accuracy_vs_tokens(
    rows: list[dict], teacher_accuracy: float, untrained: float | None, target_retention: float, out: str | Path
) -> Path:
    """Accuracy against training tokens (log x) for OPD, the baseline and the ablations."""
    return plot_accuracy_vs(rows, "training_tokens", teacher_accuracy, untrained, target_retention, out)


def plot_accuracy_vs_flops(
    rows: list[dict], teacher_accuracy: float, untrained: float | None, target_retention: float, out: str | Path
) -> Path:
    """Accuracy against training FLOPs (log x) for OPD, the baseline and the ablations."""
    return plot_accuracy_vs(rows, "flops", teacher_accuracy, untrained, target_retention, out)


def plot_accuracy_vs(
    rows: list[dict],
    axis: str,
    teacher_accuracy: float,
    untrained: float | None,
    target_retention: float,
    out: str | Path,
) -> Path:
    """Accuracy against ``axis`` (``training_tokens`` or ``flops``, log x); arms without that value are left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in rows if r.get(axis) is not None]
    means = [g for g in seed_means(rows) if g.get(axis) is not None]
    for objective in ("opd", "mdm_sft"):
        line = [g for g in means if g["group"] == "main" and g["objective"] == objective]
        if not line:
            continue
        line.sort(key=lambda g: g[axis])
        x = [g[axis] for g in line]
        ax.errorbar(
            x,
            [g["accuracy"] for g in line],
            yerr=[g["accuracy_std"] for g in line],
            marker="o",
            color=COLORS[objective],
            label=LABELS[objective],
            capsize=3,
        )
        singles = [(r[axis], r["accuracy"]) for r in rows if r["group"] == "main" and r["objective"] == objective]
        ax.scatter(*zip(*singles), color=COLORS[objective], alpha=0.3, s=12)
    styles = iter(zip("s^vDP*Xh", ABLATION_COLORS))
    for g in (g for g in means if g["group"] == "ablation"):
        marker, color = next(styles, ("x", "gray"))
        ax.errorbar(
            [g[axis]],
            [g["accuracy"]],
            yerr=[g["accuracy_std"]],
            marker=marker,
            color=color,
            ls="none",
            capsize=3,
            label=f"OPD, {g['variant']}",
        )
    _references(ax, teacher_accuracy, target_retention, untrained)
    ax.set_xscale("log")
    xlabel, title = AXIS_LABELS[axis]
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out, plt)


def plot_accuracy_vs_tokens_per_step(
    sweep: list[dict], teacher_accuracy: float, target_retention: float, out: str | Path
) -> Path:
    """Accuracy against tokens per step; each line is one (model, block size) over the thresholds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    block_sizes = sorted({s["block_size"] for s in sweep})
    for objective in sorted({s["objective"] for s in sweep}):
        for i, block_size in enumerate(block_sizes):
            pts = sorted(
                (
                    (s["tokens_per_step"], s["accuracy"], s["threshold"])
                    for s in sweep
                    if s["objective"] == objective and s["block_size"] == block_size
                ),
                key=lambda p: -p[2],
            )
            if not pts:
                continue
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                ls=styles[i % len(styles)],
                color=COLORS.get(objective),
                label=f"{LABELS.get(objective, objective)}, B={block_size}",
            )
            for tps, acc, threshold in pts:
                ax.annotate(f"{threshold:g}", (tps, acc), textcoords="offset points", xytext=(3, 3), fontsize=6)
    _references(ax, teacher_accuracy, target_retention, None)
    ax.set_xlabel("tokens per denoising step")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy vs parallelism (labels: confidence threshold)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out, plt)


def _save(fig, out: str | Path, plt) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)  # whole file or nothing under the final name
    return out


HELDOUT_COLORS = {"opd": "tab:blue", "mdm_sft": "tab:orange", "mdm_sft_teacher": "tab:green"}


def plot_heldout_retention(summary: dict, out: str | Path) -> Path:
    """Held-out (solid) and trained-skill (dashed) retention against training tokens and training FLOPs (log x),
    one line per arm kind (seed means of the split means), single seeds as dots.

    Args:
        summary: :func:`opdlm.study.heldout.summarize_heldout`'s result.
    """
    from opdlm.study.heldout import KIND_LABELS, KIND_ORDER

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    groups = summary["by_budget"]
    for ax, axis in zip(axes, ("training_tokens", "flops")):
        for kind in KIND_ORDER:
            line = sorted((g for g in groups if g["kind"] == kind and g.get(axis) is not None), key=lambda g: g[axis])
            if not line:
                continue
            color = HELDOUT_COLORS[kind]
            for name, style in (("heldout", "-"), ("trained", "--")):
                pts = [(g[axis], g[f"{name}_retention"]) for g in line if g[f"{name}_retention"] is not None]
                if not pts:
                    continue
                where = "held-out skills" if name == "heldout" else "trained skills"
                ax.plot(*zip(*pts), marker="o", ls=style, color=color, label=f"{KIND_LABELS[kind]}, {where}")
                seeds = [(g[axis], v) for g in line for v in g[f"{name}_retention_by_seed"].values() if v is not None]
                if seeds:
                    ax.scatter(*zip(*seeds), color=color, alpha=0.3, s=12)
        ax.axhline(1.0, color="black", lw=1, label="teacher (retention 1)")
        ax.set_xscale("log")
        ax.set_xlabel(AXIS_LABELS[axis][0])
        ax.set_title(f"Retention vs {'training tokens' if axis == 'training_tokens' else 'training FLOPs'}")
    axes[0].set_ylabel("accuracy / teacher's on the same skills")
    axes[0].set_ylim(0, 1.1)
    axes[1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _save(fig, out, plt)
