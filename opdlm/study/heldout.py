"""The held-out-skill section's numbers: per-skill accuracy, trained / held-out means, retention by budget.

Each arm of the section trained on the prompts of some skills (its split's ``trained_skills``) and
was scored on every skill (``per_skill`` of its evaluation). Its trained-skill accuracy is the mean
of its per-skill accuracies over the trained skills, its held-out accuracy the mean over the others,
and each retention is that mean over the teacher's mean on the same skills. An arm kind's retention
at a budget and seed averages its splits, so every skill counts once as held out. Pure functions of
the result rows (dicts as the study's jobs write them), tested on hand-made rows.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

KIND_ORDER = ("opd", "mdm_sft", "mdm_sft_teacher")
KIND_LABELS = {
    "opd": "OPD",
    "mdm_sft": "mdm_sft (reference answers)",
    "mdm_sft_teacher": "mdm_sft (teacher's greedy completions)",
}


def skill_mean(per_skill: dict[str, dict], skills: list[str]) -> float:
    """Mean accuracy over ``skills`` (each skill weighs the same, whatever its row count).

    Raises:
        KeyError: a skill the evaluation did not score (the eval rows must cover every skill).
    """
    return statistics.fmean(per_skill[s]["accuracy"] for s in skills)


def retention_row(result: dict, teacher_per_skill: dict[str, dict]) -> dict:
    """One held-out arm's row: accuracy on its trained and held-out skills and each over the teacher's.

    Returns:
        The arm's identity (kind, split, budget level, seed, tokens, FLOPs) with ``trained_accuracy``,
        ``heldout_accuracy``, ``trained_retention``, ``heldout_retention`` (None where the teacher
        scores 0 on those skills) and ``per_skill`` (skill -> accuracy).
    """
    trained, held = result["trained_skills"], result["heldout_skills"]
    per_skill = result["per_skill"]
    row = {
        k: result.get(k)
        for k in ("arm_id", "kind", "split", "budget_level", "seed", "training_tokens", "flops", "accuracy")
    }
    for name, skills in (("trained", trained), ("heldout", held)):
        acc, teacher = skill_mean(per_skill, skills), skill_mean(teacher_per_skill, skills)
        row[f"{name}_accuracy"] = acc
        row[f"{name}_teacher"] = teacher
        row[f"{name}_retention"] = acc / teacher if teacher > 0 else None
    row["trained_skills"], row["heldout_skills"] = list(trained), list(held)
    row["per_skill"] = {s: v["accuracy"] for s, v in per_skill.items()}
    return row


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def by_budget(rows: list[dict]) -> list[dict]:
    """Retention rows averaged over splits per (kind, budget level, seed), then gathered per (kind, budget level).

    Returns:
        One dict per (budget level, kind), sorted by level then :data:`KIND_ORDER`: ``kind``,
        ``budget_level``, ``seeds``, ``training_tokens`` and ``flops`` (means), and for ``trained`` and
        ``heldout``: ``<name>_retention_by_seed`` (seed -> the mean over that seed's splits; only seeds
        with every split), ``<name>_retention`` (their mean), ``<name>_accuracy`` (mean).
        ``complete`` says whether every seed has every split.
    """
    splits = sorted({r["split"] for r in rows})
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["budget_level"], r["kind"])].append(r)
    out = []
    for (level, kind), members in groups.items():
        seeds = sorted({m["seed"] for m in members})
        whole = [s for s in seeds if {m["split"] for m in members if m["seed"] == s} == set(splits)]
        g = {
            "kind": kind,
            "budget_level": level,
            "seeds": whole,
            "complete": len(whole) == len(seeds) and bool(whole),
            "training_tokens": _mean([m["training_tokens"] for m in members]),
            "flops": _mean([m.get("flops") for m in members]),
        }
        for name in ("trained", "heldout"):
            per_seed = {
                s: _mean([m[f"{name}_retention"] for m in members if m["seed"] == s])
                for s in whole  # a seed missing a split would weigh its skills unevenly
            }
            g[f"{name}_retention_by_seed"] = per_seed
            g[f"{name}_retention"] = _mean(list(per_seed.values()))
            g[f"{name}_accuracy"] = _mean([m[f"{name}_accuracy"] for m in members if m["seed"] in whole])
        out.append(g)
    return sorted(out, key=lambda g: (g["budget_level"], KIND_ORDER.index(g["kind"])))


def per_skill_table(rows: list[dict]) -> list[dict]:
    """Per (kind, budget level, skill): mean accuracy over seeds when the skill was trained and when it was held out."""
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: {"trained": [], "heldout": []})
    for r in rows:
        for skill, acc in r["per_skill"].items():
            where = "trained" if skill in r["trained_skills"] else "heldout"
            cells[(r["budget_level"], r["kind"], skill)][where].append(acc)
    return [
        {
            "budget_level": level,
            "kind": kind,
            "skill": skill,
            "trained": _mean(v["trained"]),
            "heldout": _mean(v["heldout"]),
        }
        for (level, kind, skill), v in sorted(cells.items(), key=lambda kv: (kv[0][0], KIND_ORDER.index(kv[0][1])))
    ]


def comparisons(groups: list[dict]) -> list[dict]:
    """Per budget level and baseline: OPD's held-out retention minus the baseline's (seed means), and per seed."""
    out = []
    levels = sorted({g["budget_level"] for g in groups})
    for level in levels:
        at = {g["kind"]: g for g in groups if g["budget_level"] == level}
        opd = at.get("opd")
        for kind in KIND_ORDER[1:]:
            base = at.get(kind)
            if opd is None or base is None or opd["heldout_retention"] is None or base["heldout_retention"] is None:
                continue
            common = sorted(set(opd["heldout_retention_by_seed"]) & set(base["heldout_retention_by_seed"]))
            out.append(
                {
                    "budget_level": level,
                    "baseline": kind,
                    "opd_heldout_retention": opd["heldout_retention"],
                    "baseline_heldout_retention": base["heldout_retention"],
                    "delta": opd["heldout_retention"] - base["heldout_retention"],
                    "delta_by_seed": {
                        s: opd["heldout_retention_by_seed"][s] - base["heldout_retention_by_seed"][s] for s in common
                    },
                }
            )
    return out


def statement(comps: list[dict]) -> str:
    """One sentence: at how many (budget, baseline) pairs OPD keeps held-out skills better, in every seed."""
    if not comps:
        return "no held-out comparison: OPD or a baseline arm is missing"
    wins = [c for c in comps if c["delta_by_seed"] and all(d > 0 for d in c["delta_by_seed"].values())]
    losses = [c for c in comps if c["delta_by_seed"] and all(d < 0 for d in c["delta_by_seed"].values())]
    return (
        f"OPD's held-out retention beats the baseline in every seed at {len(wins)} of {len(comps)} (budget, baseline) "
        f"pairs and trails it in every seed at {len(losses)}."
    )


def summarize_heldout(results: list[dict], teacher_per_skill: dict[str, dict]) -> dict:
    """The section's numbers: a row per arm, the per-budget groups, per-skill cells, comparisons, a statement."""
    rows = [retention_row(r, teacher_per_skill) for r in results]
    groups = by_budget(rows)
    comps = comparisons(groups)
    return {
        "rows": rows,
        "by_budget": groups,
        "per_skill": per_skill_table(rows),
        "comparisons": comps,
        "statement": statement(comps),
        "teacher_per_skill": {s: v["accuracy"] for s, v in teacher_per_skill.items()},
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _seeds(by_seed: dict) -> str:
    return ", ".join(f"s{s}: {_pct(v)}" for s, v in sorted(by_seed.items())) or "-"


def markdown_heldout(summary: dict) -> list[str]:
    """The section as markdown lines (appended to the study's results.md)."""
    teacher = summary["teacher_per_skill"]
    splits = sorted({(r["split"], tuple(r["trained_skills"]), tuple(r["heldout_skills"])) for r in summary["rows"]})
    lines = [
        "",
        "## Held-out skills: trained on some skills, scored on all",
        "",
        "Every arm trains on the prompts of its split's skills only and is scored on every skill of the suite. "
        "Retention = mean accuracy over a set of skills / the teacher's mean on the same skills; an arm kind's "
        "retention at a budget and seed averages its splits, so each skill counts once as held out. "
        "Baselines are matched to the training tokens OPD used in the same split and budget.",
        "",
        "Teacher per skill: " + ", ".join(f"{s} {_pct(a)}%" for s, a in teacher.items()) + ".",
        "Splits: " + "; ".join(f"{name}: train {'+'.join(t)}, hold out {'+'.join(h)}" for name, t, h in splits) + ".",
        "",
        f"**{summary['statement']}**",
        "",
        "| OPD budget | arm | training tokens | training FLOPs | held-out retention % (per seed) | held-out mean % "
        "| trained retention % (per seed) | trained mean % |",
        "| ---: | --- | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for g in summary["by_budget"]:
        flops = "-" if g["flops"] is None else f"{g['flops']:.3g}"
        partial = "" if g["complete"] else " (partial)"
        lines.append(
            f"| {g['budget_level']:,} | {KIND_LABELS[g['kind']]}{partial} | {g['training_tokens']:,.0f} | {flops} | "
            f"{_seeds(g['heldout_retention_by_seed'])} | **{_pct(g['heldout_retention'])}** | "
            f"{_seeds(g['trained_retention_by_seed'])} | {_pct(g['trained_retention'])} |"
        )
    if summary["comparisons"]:
        lines += [
            "",
            "### OPD vs each baseline on held-out skills",
            "",
            "| OPD budget | baseline | OPD held-out retention % | baseline % | OPD - baseline (pts, per seed) |",
            "| ---: | --- | ---: | ---: | --- |",
        ]
        for c in summary["comparisons"]:
            per_seed = ", ".join(f"s{s}: {100 * d:+.1f}" for s, d in sorted(c["delta_by_seed"].items()))
            lines.append(
                f"| {c['budget_level']:,} | {KIND_LABELS[c['baseline']]} | {_pct(c['opd_heldout_retention'])} | "
                f"{_pct(c['baseline_heldout_retention'])} | {100 * c['delta']:+.1f} ({per_seed}) |"
            )
    lines += [
        "",
        "### Accuracy per skill (mean over seeds): when trained on it / when held out",
        "",
        "| OPD budget | arm | " + " | ".join(teacher) + " |",
        "| ---: | --- |" + " ---: |" * len(teacher),
    ]
    cells = defaultdict(dict)
    for c in summary["per_skill"]:
        cells[(c["budget_level"], c["kind"])][c["skill"]] = c
    for (level, kind), by_skill in cells.items():
        row = [
            f"{_pct(by_skill[s]['trained'])} / {_pct(by_skill[s]['heldout'])}" if s in by_skill else "-"
            for s in teacher
        ]
        lines.append(f"| {level:,} | {KIND_LABELS[kind]} | " + " | ".join(row) + " |")
    return lines
