"""The study's numbers: per-arm rows, seed means, the OPD-vs-baseline token ratio, and the markdown table.

Everything here is a pure function of the rows (dicts as written by the jobs), so the headline
(:func:`summarize`) is tested on hand-made rows.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

ROW_KEYS = (
    "arm_id",
    "group",
    "objective",
    "variant",
    "budget",
    "seed",
    "rollout_steps",
    "training_tokens",
    "accuracy",
    "teacher_accuracy",
    "retention",
    "tokens_per_step",
    "mean_forwards",
    "mean_length",
    "finished_rate",
    "n_eval",
    "final_loss",
    "train_seconds",
    "eval_seconds",
    "planned_tokens",
    "flops",
    "description",
    "overrides",
)


def table_row(result: dict) -> dict:
    """The row of one arm's result (a fixed key order; missing keys are None)."""
    return {k: result.get(k) for k in ROW_KEYS}


def seed_means(rows: list[dict]) -> list[dict]:
    """Rows grouped by (group, objective, variant, budget): mean tokens, mean and spread of accuracy.

    Returns:
        One dict per group, sorted by (group, objective, variant, tokens), with ``training_tokens``
        (mean), ``accuracy`` (mean), ``accuracy_std`` (sample std; 0 for one seed), ``accuracies``,
        ``seeds``, ``retention``, ``tokens_per_step``, ``final_loss`` (means).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["group"], r["objective"], r["variant"], r["budget"])].append(r)
    out = []
    for (group, objective, variant, budget), members in groups.items():
        accs = [m["accuracy"] for m in members]
        out.append(
            {
                "group": group,
                "objective": objective,
                "variant": variant,
                "budget": budget,
                "description": members[0].get("description") or "",
                "training_tokens": statistics.fmean(m["training_tokens"] for m in members),
                "accuracy": statistics.fmean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "accuracies": accs,
                "seeds": [m["seed"] for m in members],
                "retention": _mean([m.get("retention") for m in members]),
                "tokens_per_step": _mean([m.get("tokens_per_step") for m in members]),
                "final_loss": _mean([m.get("final_loss") for m in members]),
                "rollout_steps": _mean([m.get("rollout_steps") for m in members]),
            }
        )
    return sorted(out, key=lambda g: (g["group"] != "main", g["objective"], g["variant"], g["training_tokens"]))


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def curve(means: list[dict], objective: str) -> list[tuple[float, float]]:
    """``(tokens, accuracy)`` of an objective's main arms, by increasing tokens."""
    return sorted(
        (g["training_tokens"], g["accuracy"]) for g in means if g["group"] == "main" and g["objective"] == objective
    )


def tokens_to_reach(points: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """Tokens at which a learning curve first reaches ``target`` accuracy.

    Between the last point below the target and the first at or above it, accuracy is interpolated
    linearly in log-tokens (budgets are spaced geometrically).

    Args:
        points: ``(tokens, accuracy)`` sorted by tokens.

    Returns:
        ``(tokens, kind)``: kind ``interpolated``; ``at_most`` when the first point already reaches the
        target (the curve may get there with fewer tokens); ``never`` (tokens None) when no point does.
    """
    for i, (tokens, acc) in enumerate(points):
        if acc >= target:
            if i == 0:
                return tokens, "at_most"
            t0, a0 = points[i - 1]
            if acc == target:
                return tokens, "interpolated"
            frac = (target - a0) / (acc - a0)
            return math.exp(math.log(t0) + frac * (math.log(tokens) - math.log(t0))), "interpolated"
    return None, "never"


def token_ratio(opd_point: tuple[float, float], baseline: list[tuple[float, float]]) -> dict:
    """How many times OPD's tokens the baseline needs to reach OPD's accuracy at ``opd_point``."""
    opd_tokens, opd_acc = opd_point
    tokens, kind = tokens_to_reach(baseline, opd_acc)
    largest = baseline[-1][0] if baseline else None
    return {
        "opd_tokens": opd_tokens,
        "opd_accuracy": opd_acc,
        "baseline_tokens": tokens,
        "kind": kind,
        "ratio": tokens / opd_tokens if tokens is not None else None,
        "largest_baseline_ratio": largest / opd_tokens if largest else None,
    }


def ratio_statement(r: dict) -> str:
    """One sentence for the README: the ratio, or that the baseline never matches, or that OPD does not win."""
    acc = f"{r['opd_accuracy']:.3f}"
    if r["kind"] == "never":
        return (
            f"Within the budgets tried (up to {r['largest_baseline_ratio']:.1f}x OPD's {r['opd_tokens']:,.0f} tokens) "
            f"the baseline never reaches OPD's accuracy of {acc}: the ratio is above {r['largest_baseline_ratio']:.1f}x."
        )
    if r["ratio"] < 1.0:
        return (
            f"OPD does not win: the baseline reaches OPD's accuracy of {acc} with {r['baseline_tokens']:,.0f} tokens, "
            f"{r['ratio']:.2f}x OPD's {r['opd_tokens']:,.0f}."
        )
    bound = "at most " if r["kind"] == "at_most" else "about "
    return (
        f"The baseline needs {bound}{r['ratio']:.1f}x OPD's training tokens ({r['baseline_tokens']:,.0f} vs "
        f"{r['opd_tokens']:,.0f}) to match OPD's accuracy of {acc}."
    )


def ratio_target_met(r: dict, target: float) -> bool | None:
    """Whether the baseline needs at least ``target`` x OPD's tokens; None when the budgets tried cannot tell."""
    if r["kind"] == "interpolated":
        return r["ratio"] >= target
    if r["kind"] == "never":  # the baseline stayed below OPD up to the largest budget tried
        return True if r["largest_baseline_ratio"] >= target else None
    return False if r["ratio"] < target else None  # at_most: only an upper bound is known


def summarize(
    rows: list[dict],
    teacher_accuracy: float,
    untrained_accuracy: float | None,
    target_retention: float,
    target_ratio: float,
) -> dict:
    """The headline: OPD at its largest budget, its retention, the token ratio, and whether targets are met."""
    means = seed_means(rows)
    opd, baseline = curve(means, "opd"), curve(means, "mdm_sft")
    if not opd:
        return {
            "teacher_accuracy": teacher_accuracy,
            "untrained_accuracy": untrained_accuracy,
            "statement": "no OPD arm was trained",
        }
    final = opd[-1]
    retention = final[1] / teacher_accuracy if teacher_accuracy > 0 else None
    ratio = token_ratio(final, baseline) if baseline else None
    per_budget = [token_ratio(p, baseline) for p in opd] if baseline else []
    ratio_met = ratio_target_met(ratio, target_ratio) if ratio else None
    return {
        "teacher_accuracy": teacher_accuracy,
        "untrained_accuracy": untrained_accuracy,
        "opd_tokens": final[0],
        "opd_accuracy": final[1],
        "opd_retention": retention,
        "token_ratio": ratio,
        "token_ratio_by_budget": per_budget,
        "targets": {
            "retention": target_retention,
            "retention_met": retention is not None and retention >= target_retention,
            "token_ratio": target_ratio,
            "token_ratio_met": ratio_met,
        },
        "statement": ratio_statement(ratio) if ratio else "no baseline arm was trained",
    }


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "undetermined within the budgets tried"}[met]


def _match(r: dict) -> str:
    if r["kind"] == "never":
        return "not reached"
    return ("<= " if r["kind"] == "at_most" else "") + f"{r['baseline_tokens']:,.0f}"


def _ratio(r: dict) -> str:
    if r["kind"] == "never":
        return f"> {r['largest_baseline_ratio']:.1f}x"
    return ("<= " if r["kind"] == "at_most" else "") + f"{r['ratio']:.2f}x"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _acc(g: dict) -> str:
    return f"{_pct(g['accuracy'])} ± {_pct(g['accuracy_std'])}" if len(g["accuracies"]) > 1 else _pct(g["accuracy"])


def markdown(rows: list[dict], sweep: list[dict], summary: dict, meta: dict) -> str:
    """The study as markdown: setup, headline, OPD vs baseline by budget, the ratio per budget, ablations, sweep."""
    means = seed_means(rows)
    lines = [
        "# OPD vs masked-diffusion baseline (toy scale)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Teacher: `{meta['teacher']}`, accuracy **{_pct(summary['teacher_accuracy'])}%** on {meta['n_eval']} held-out "
        f"synthetic rows (autoregressive, greedy); untrained converted student: {_pct(summary['untrained_accuracy'])}%. "
        f"Students are scored on the same rows with the recipe's sampler ({meta['eval_sampler']}). "
        f"Training tokens: {meta['token_unit']}",
        "",
        "## Headline",
        "",
    ]
    if "opd_accuracy" in summary:
        t = summary["targets"]
        lines += [
            f"- OPD at {summary['opd_tokens']:,.0f} tokens: accuracy {_pct(summary['opd_accuracy'])}%, "
            f"{_pct(summary['opd_retention'])}% of the teacher (target {_pct(t['retention'])}%: "
            f"{_verdict(t['retention_met'])}).",
            f"- Token ratio (target >= {t['token_ratio']:g}x: {_verdict(t['token_ratio_met'])}): {summary['statement']}",
        ]
    lines += [
        "",
        "## OPD vs baseline at matched token budgets",
        "",
        "| objective | training tokens | rollout steps | accuracy % (mean ± std over seeds) | of teacher % | tokens/step | final loss | seeds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for g in (g for g in means if g["group"] == "main"):
        lines.append(
            f"| {g['objective']} | {g['training_tokens']:,.0f} | {_num(g['rollout_steps'], 0)} | {_acc(g)} | "
            f"{_pct(g['retention'])} | {_num(g['tokens_per_step'])} | {_num(g['final_loss'], 3)} | {g['seeds']} |"
        )
    if summary.get("token_ratio_by_budget"):
        lines += [
            "",
            "## Baseline tokens needed to match OPD",
            "",
            "| OPD tokens | OPD accuracy % | baseline tokens to match | ratio |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for r in summary["token_ratio_by_budget"]:
            lines.append(f"| {r['opd_tokens']:,.0f} | {_pct(r['opd_accuracy'])} | {_match(r)} | {_ratio(r)} |")
    ablations = [g for g in means if g["group"] == "ablation"]
    if ablations:
        ref = {g["budget"]: g for g in means if g["group"] == "main" and g["objective"] == "opd"}
        lines += [
            "",
            "## Ablations (OPD, one change each)",
            "",
            "| variant | change | training tokens | accuracy % | vs OPD default (pts) | final loss | seeds |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for g in ablations:
            base = ref.get(g["budget"])
            delta = f"{100 * (g['accuracy'] - base['accuracy']):+.1f}" if base else "-"
            lines.append(
                f"| {g['variant']} | {g['description']} | {g['training_tokens']:,.0f} | {_acc(g)} | {delta} | "
                f"{_num(g['final_loss'], 3)} | {g['seeds']} |"
            )
    if sweep:
        lines += [
            "",
            "## Parallel decoding: accuracy vs tokens per step",
            "",
            "| model | block size | threshold | accuracy % | tokens/step |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for s in sweep:
            lines.append(
                f"| {s['objective']} ({s['training_tokens']:,} tokens) | {s['block_size']} | {s['threshold']:g} | "
                f"{_pct(s['accuracy'])} | {_num(s['tokens_per_step'])} |"
            )
    return "\n".join(lines) + "\n"
