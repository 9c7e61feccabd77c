"""The study's numbers: per-arm rows, seed means, the OPD-vs-baseline token and FLOPs ratios, the markdown table.

Every arm is placed on two axes: training tokens (``training_tokens``, the trainer's
``cumulative_train_tokens``) and training FLOPs (``flops``: rollout + teacher + student, the
trainer's ``train_summary.json`` ``flops.total``). Everything here is a pure function of the rows
(dicts as written by the study's jobs), so the headline (:func:`summarize`) is tested on hand-made rows.
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
    "flops_rollout",
    "flops_teacher",
    "flops_student",
    "description",
    "overrides",
)
AXES = ("training_tokens", "flops")  # the two x axes every arm is reported against
FLOPS_PARTS = ("rollout", "teacher", "student")


def flops_fields(flops: float | dict | None) -> dict:
    """``train_summary.json``'s ``flops`` as row fields: ``flops`` (the total) and ``flops_<part>``.

    Accepts the breakdown ``{"rollout", "teacher", "student", "total"}`` or a bare total (older
    training folders, which counted one number); missing parts are None.
    """
    if isinstance(flops, dict):
        total = flops.get("total")
        if total is None and all(flops.get(p) is not None for p in FLOPS_PARTS):
            total = sum(flops[p] for p in FLOPS_PARTS)
        return {"flops": total, **{f"flops_{p}": flops.get(p) for p in FLOPS_PARTS}}
    return {"flops": flops, **{f"flops_{p}": None for p in FLOPS_PARTS}}


def table_row(result: dict) -> dict:
    """The row of one arm's result (a fixed key order; missing keys are None)."""
    return {k: result.get(k) for k in ROW_KEYS}


def seed_means(rows: list[dict]) -> list[dict]:
    """Rows grouped by (group, objective, variant, budget): mean tokens, mean and spread of accuracy.

    Returns:
        One dict per group, sorted by (group, objective, variant, tokens), with ``training_tokens``
        (mean), ``accuracy`` (mean), ``accuracy_std`` (sample std; 0 for one seed), ``accuracies``,
        ``seeds``, ``retention``, ``tokens_per_step``, ``final_loss``, ``flops`` (means; ``flops`` None
        unless every seed has it).
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
                "flops": _mean_all([m.get("flops") for m in members]),
                **{f"flops_{p}": _mean_all([m.get(f"flops_{p}") for m in members]) for p in FLOPS_PARTS},
            }
        )
    return sorted(out, key=lambda g: (g["group"] != "main", g["objective"], g["variant"], g["training_tokens"]))


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _mean_all(values: list) -> float | None:
    """The mean, or None when any value is missing (a partial FLOPs mean would mislead)."""
    return statistics.fmean(values) if values and all(v is not None for v in values) else None


def curve(means: list[dict], objective: str, axis: str = "training_tokens") -> list[tuple[float, float]]:
    """``(x, accuracy)`` of an objective's main arms by increasing ``x`` (``training_tokens`` or ``flops``).

    Arms without a value on ``axis`` (no FLOPs count) are left out.
    """
    return sorted(
        (g[axis], g["accuracy"])
        for g in means
        if g["group"] == "main" and g["objective"] == objective and g.get(axis) is not None
    )


def accuracy_at(points: list[tuple[float, float]], x: float) -> float | None:
    """Accuracy of a learning curve at ``x``, linear in log-x between its points; None outside them.

    Args:
        points: ``(x, accuracy)`` sorted by x (x > 0).
    """
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, a0), (x1, a1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return max(a0, a1)
            frac = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return a0 + frac * (a1 - a0)
    return points[-1][1]  # a single point, and x is that point


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


def token_ratio(opd_point: tuple[float, float], baseline: list[tuple[float, float]], unit: str = "tokens") -> dict:
    """How many times OPD's tokens (or FLOPs: ``unit="flops"``) the baseline needs to reach OPD's
    accuracy at ``opd_point``; keys ``opd_<unit>`` and ``baseline_<unit>`` name the amounts."""
    opd_x, opd_acc = opd_point
    x, kind = tokens_to_reach(baseline, opd_acc)
    largest = baseline[-1][0] if baseline else None
    return {
        f"opd_{unit}": opd_x,
        "opd_accuracy": opd_acc,
        f"baseline_{unit}": x,
        "kind": kind,
        "ratio": x / opd_x if x is not None else None,
        "largest_baseline_ratio": largest / opd_x if largest else None,
    }


def flops_ratio(opd_point: tuple[float, float], baseline: list[tuple[float, float]]) -> dict:
    """:func:`token_ratio` on the FLOPs axis: the baseline's FLOPs to match OPD / OPD's FLOPs."""
    return token_ratio(opd_point, baseline, unit="flops")


def _amount(x: float, unit: str) -> str:
    return f"{x:,.0f}" if unit == "tokens" else f"{x:.3g}"


def ratio_statement(r: dict, unit: str = "tokens") -> str:
    """One sentence for the README: the ratio, or that the baseline never matches, or that OPD does not win."""
    acc = f"{r['opd_accuracy']:.3f}"
    opd, what = _amount(r[f"opd_{unit}"], unit), "training tokens" if unit == "tokens" else "training FLOPs"
    if r["kind"] == "never":
        return (
            f"Within the budgets tried (up to {r['largest_baseline_ratio']:.1f}x OPD's {opd} {what.split()[1]}) "
            f"the baseline never reaches OPD's accuracy of {acc}: the ratio is above "
            f"{r['largest_baseline_ratio']:.1f}x."
        )
    base = _amount(r[f"baseline_{unit}"], unit)
    if r["ratio"] < 1.0:
        return (
            f"OPD does not win: the baseline reaches OPD's accuracy of {acc} with {base} {what.split()[1]}, "
            f"{r['ratio']:.2f}x OPD's {opd}."
        )
    bound = "at most " if r["kind"] == "at_most" else "about "
    return (
        f"The baseline needs {bound}{r['ratio']:.1f}x OPD's {what} ({base} vs {opd}) to match OPD's accuracy of {acc}."
    )


def ratio_target_met(r: dict, target: float) -> bool | None:
    """Whether the baseline needs at least ``target`` x OPD's tokens; None when the budgets tried cannot tell."""
    if r["kind"] == "interpolated":
        return r["ratio"] >= target
    if r["kind"] == "never":  # the baseline stayed below OPD up to the largest budget tried
        return True if r["largest_baseline_ratio"] >= target else None
    return False if r["ratio"] < target else None  # at_most: only an upper bound is known


def ablation_comparisons(means: list[dict]) -> list[dict]:
    """Each ablation against the OPD default curve, at its own training tokens and at its own FLOPs.

    The default's accuracy at an ablation's tokens (FLOPs) is read off the default's main-arm curve,
    linear in log-x (:func:`accuracy_at`); None when the ablation lies outside the curve. A variant
    that costs more compute per token (every denoising round as a training state) can win at matched
    tokens and still lose at matched FLOPs: the FLOPs comparison is the one that says which recipe to use.

    Returns:
        One dict per ablation (seed means): ``variant``, ``description``, ``training_tokens``,
        ``flops``, ``accuracy``, ``accuracy_std``, ``seeds``, ``default_at_tokens``,
        ``delta_at_tokens``, ``default_at_flops``, ``delta_at_flops`` (accuracy, fractions of 1).
    """
    by_tokens, by_flops = curve(means, "opd"), curve(means, "opd", "flops")
    out = []
    for g in (g for g in means if g["group"] == "ablation"):
        at_tokens = accuracy_at(by_tokens, g["training_tokens"])
        at_flops = accuracy_at(by_flops, g["flops"]) if g.get("flops") is not None else None
        out.append(
            {
                **{k: g[k] for k in ("variant", "description", "training_tokens", "flops", "accuracy")},
                **{k: g[k] for k in ("accuracy_std", "seeds", "accuracies")},
                "default_at_tokens": at_tokens,
                "delta_at_tokens": None if at_tokens is None else g["accuracy"] - at_tokens,
                "default_at_flops": at_flops,
                "delta_at_flops": None if at_flops is None else g["accuracy"] - at_flops,
            }
        )
    return out


def summarize(
    rows: list[dict],
    teacher_accuracy: float,
    untrained_accuracy: float | None,
    target_retention: float,
    target_ratio: float,
) -> dict:
    """The headline: OPD at its largest budget, its retention, the token and FLOPs ratios, whether
    targets are met, and every ablation against the default at matched tokens and matched FLOPs."""
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
    opd_f, base_f = curve(means, "opd", "flops"), curve(means, "mdm_sft", "flops")
    # the FLOPs ratio at the same arms as the token ratio: OPD's largest budget (its FLOPs point)
    final_f = next((p for p in opd_f if p[1] == final[1]), opd_f[-1]) if opd_f else None
    f_ratio = flops_ratio(final_f, base_f) if final_f and base_f else None
    comparisons = ablation_comparisons(means)
    ranked = [c for c in comparisons if c["delta_at_flops"] is not None]
    best = max(ranked, key=lambda c: c["delta_at_flops"]) if ranked else None
    return {
        "teacher_accuracy": teacher_accuracy,
        "untrained_accuracy": untrained_accuracy,
        "opd_tokens": final[0],
        "opd_accuracy": final[1],
        "opd_retention": retention,
        "opd_flops": final_f[0] if final_f else None,
        "token_ratio": ratio,
        "token_ratio_by_budget": per_budget,
        "flops_ratio": f_ratio,
        "flops_ratio_by_budget": [flops_ratio(p, base_f) for p in opd_f] if base_f else [],
        "ablations": comparisons,
        "best_ablation_at_flops": best["variant"] if best else None,
        "targets": {
            "retention": target_retention,
            "retention_met": retention is not None and retention >= target_retention,
            "token_ratio": target_ratio,
            "token_ratio_met": ratio_met,
            "flops_ratio_met": ratio_target_met(f_ratio, target_ratio) if f_ratio else None,
        },
        "statement": ratio_statement(ratio) if ratio else "no baseline arm was trained",
        "flops_statement": ratio_statement(f_ratio, "flops") if f_ratio else None,
    }


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "undetermined within the budgets tried"}[met]


def _match(r: dict, unit: str = "tokens") -> str:
    if r["kind"] == "never":
        return "not reached"
    return ("<= " if r["kind"] == "at_most" else "") + _amount(r[f"baseline_{unit}"], unit)


def _ratio(r: dict) -> str:
    if r["kind"] == "never":
        return f"> {r['largest_baseline_ratio']:.1f}x"
    return ("<= " if r["kind"] == "at_most" else "") + f"{r['ratio']:.2f}x"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _flops(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _acc(g: dict) -> str:
    return f"{_pct(g['accuracy'])} ± {_pct(g['accuracy_std'])}" if len(g["accuracies"]) > 1 else _pct(g["accuracy"])


def markdown(rows: list[dict], sweep: list[dict], summary: dict, meta: dict) -> str:
    """The study as markdown: setup, headline, OPD vs baseline by budget, the token and FLOPs ratios
    per budget, ablations (at matched tokens and matched FLOPs), sweep."""
    means = seed_means(rows)
    lines = [
        "# OPD vs masked-diffusion baseline (toy scale)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Teacher: `{meta['teacher']}`, accuracy **{_pct(summary['teacher_accuracy'])}%** on {meta['n_eval']} held-out "
        "synthetic rows (autoregressive, greedy); untrained converted student: "
        f"{_pct(summary['untrained_accuracy'])}%. "
        f"Students are scored on the same rows with the recipe's sampler ({meta['eval_sampler']}). "
        f"Training tokens: {meta['token_unit']}",
    ]
    if meta.get("flops_unit"):
        lines += ["", f"Training FLOPs: {meta['flops_unit']}"]
    if not any(g["group"] in ("main", "ablation") for g in means):  # a study of other sections only
        return "\n".join(lines) + "\n"
    lines += ["", "## Headline", ""]
    if "opd_accuracy" in summary:
        t = summary["targets"]
        lines += [
            f"- OPD at {summary['opd_tokens']:,.0f} tokens: accuracy {_pct(summary['opd_accuracy'])}%, "
            f"{_pct(summary['opd_retention'])}% of the teacher (target {_pct(t['retention'])}%: "
            f"{_verdict(t['retention_met'])}).",
            f"- Token ratio (target >= {t['token_ratio']:g}x: {_verdict(t['token_ratio_met'])}): "
            f"{summary['statement']}",
        ]
        if summary.get("flops_statement"):
            lines.append(
                f"- FLOPs ratio (target >= {t['token_ratio']:g}x: {_verdict(t.get('flops_ratio_met'))}): "
                f"{summary['flops_statement']}"
            )
        if summary.get("best_ablation_at_flops"):
            best = next(c for c in summary["ablations"] if c["variant"] == summary["best_ablation_at_flops"])
            lines.append(
                f"- Best ablation at matched FLOPs: {best['variant']} ({_pct(best['accuracy'])}% vs the default's "
                f"{_pct(best['default_at_flops'])}% at the same FLOPs, {_pts(best['delta_at_flops'])} pts)."
            )
    lines += [
        "",
        "## OPD vs baseline at matched token budgets",
        "",
        "| objective | training tokens | training FLOPs | rollout steps | accuracy % (mean ± std over seeds) | of "
        "teacher % | tokens/step | final loss | seeds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for g in (g for g in means if g["group"] == "main"):
        lines.append(
            f"| {g['objective']} | {g['training_tokens']:,.0f} | {_flops(g.get('flops'))} | "
            f"{_num(g['rollout_steps'], 0)} | "
            f"{_acc(g)} | {_pct(g['retention'])} | {_num(g['tokens_per_step'])} | {_num(g['final_loss'], 3)} | "
            f"{g['seeds']} |"
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
    if summary.get("flops_ratio_by_budget"):
        lines += [
            "",
            "## Baseline FLOPs needed to match OPD",
            "",
            "OPD's FLOPs count its rollouts and the teacher's forward passes as well as the student's training; "
            "the baseline's are the student's training alone.",
            "",
            "| OPD FLOPs | OPD accuracy % | baseline FLOPs to match | ratio |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for r in summary["flops_ratio_by_budget"]:
            lines.append(
                f"| {_flops(r['opd_flops'])} | {_pct(r['opd_accuracy'])} | {_match(r, 'flops')} | {_ratio(r)} |"
            )
    ablations = [g for g in means if g["group"] == "ablation"]
    if ablations:
        ref = {g["budget"]: g for g in means if g["group"] == "main" and g["objective"] == "opd"}
        matched = {c["variant"]: c for c in summary.get("ablations") or []}
        lines += [
            "",
            "## Ablations (OPD variants at one token budget)",
            "",
            "The default's accuracy at an ablation's tokens or FLOPs is read off the default OPD curve (linear in "
            "log tokens / log FLOPs between its budgets; '-' outside them).",
            "",
            "| variant | change | training tokens | training FLOPs | accuracy % | per seed % | vs OPD default (pts) | "
            "vs default at same FLOPs (pts) | final loss | seeds |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
        ]
        for g in ablations:
            base = ref.get(g["budget"])
            delta = f"{100 * (g['accuracy'] - base['accuracy']):+.1f}" if base else "-"
            at_flops = matched.get(g["variant"], {}).get("delta_at_flops")
            per_seed = ", ".join(_pct(a) for a in g["accuracies"])
            lines.append(
                f"| {g['variant']} | {g['description']} | {g['training_tokens']:,.0f} | {_flops(g.get('flops'))} | "
                f"{_acc(g)} | {per_seed} | {delta} | {_pts(at_flops)} | {_num(g['final_loss'], 3)} | {g['seeds']} |"
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


def describe_sampler(sampler: dict) -> str:
    """One line for the table's header: the evaluation sampler's settings."""
    if sampler["remasking"] == "static":
        what = f"static remasking, {sampler['denoise_steps_per_block']} steps per block"
    else:
        what = f"dynamic remasking at threshold {sampler['threshold']:g}"
    temp = "greedy" if sampler["temperature"] == 0 else f"temperature {sampler['temperature']:g}"
    return f"B={sampler['block_size']}, {what}, {temp}, max {sampler['max_new_tokens']} new tokens"


def reference_row(reference: dict) -> dict:
    """The untrained converted student as a table row (0 training tokens, 0 FLOPs)."""
    u = reference["untrained"]
    return table_row(
        {
            "arm_id": "untrained",
            "group": "reference",
            "objective": "none",
            "variant": "untrained",
            "budget": 0,
            "seed": None,
            "rollout_steps": 0,
            "training_tokens": 0,
            "flops": 0,
            **u,
            "teacher_accuracy": reference["teacher_result"]["accuracy"],
            "description": "converted teacher, no training",
        }
    )
