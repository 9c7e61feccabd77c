"""The real-teacher comparison: teacher, converted student, OPD student and the mdm_sft baseline, side by side.

Reads a finished pipeline run of a recipe (``opdlm pipeline --recipe configs/smollm2-135m.yaml``: its
teacher and OPD-student evaluations and its training folder), then, with the same recipe:

1. converts the teacher again (the student before training) and scores it;
2. trains the masked-diffusion baseline (``objective: mdm_sft``) on the teacher's own greedy
   completions of the same training prompts, drawn in the same order, for as many rollout steps as
   it takes to reach the OPD run's training tokens, and scores it;
3. writes ``OUT/table.md`` and ``OUT/results.json``: accuracy, the retention metrics
   (:mod:`opdlm.eval.retention`), tokens per step, training tokens, FLOPs and wall times.

Usage:
    python benchmarks/real_side_by_side.py --run runs/smollm2-135m/<stamp-id> --out docs/results/smollm2 \
        [--recipe configs/smollm2-135m.yaml] [--work runs/side-by-side] [key=value ...]

The last line is the headline: the OPD student's agreement with the teacher over the baseline's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _baseline_recipe(recipe, steps: int | None = None):
    """``recipe`` as the mdm_sft baseline on the teacher's greedy completions (``data.responses: teacher_greedy``),
    cut to its first ``steps`` rollout steps when given."""
    from opdlm.config.recipe import Recipe
    from opdlm.study.budget import truncate_stages

    update = {"objective": "mdm_sft", "exclude_eos_from_loss": False}  # it learns to stop only from EOS targets
    if steps is not None:
        update["stages"] = truncate_stages(recipe.train.stages, steps)
    train_cfg = recipe.train.model_copy(update=update)
    data = recipe.data.model_copy(update={"responses": "teacher_greedy"})
    return Recipe.model_validate({**recipe.model_dump(), "train": train_cfg.model_dump(), "data": data.model_dump()})


def _baseline_steps(mdm, teacher_dir: Path, budget: int, max_steps: int) -> tuple[int, float, float]:
    """Rollout steps of the baseline ``mdm`` to reach ``budget`` training tokens; returns ``(steps, tokens, seconds)``.

    The teacher's completions of the training prompts are generated here once (cached by content under
    OPDLM_CACHE, :mod:`opdlm.eval.completions`); training reads the same file back.
    """
    from transformers import AutoTokenizer

    from opdlm.study.budget import plan_steps
    from opdlm.train.data import recipe_training_rows

    seed = mdm.train.seed if mdm.train.seed is not None else mdm.seed
    rows, seconds = _timed(recipe_training_rows, mdm, seed, teacher_dir=teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    thinking = mdm.convert.enable_thinking
    steps, tokens = plan_steps(
        mdm.train, rows, tokenizer, tokenizer.eos_token_id, seed, budget, 1.0, max_steps, enable_thinking=thinking
    )
    return steps, tokens, seconds


def _train_baseline(recipe, steps: int, teacher_dir: Path, converted: Path, work: Path) -> tuple[Path, float]:
    """Train the mdm_sft baseline for ``steps`` rollout steps; returns (folder, seconds)."""
    from opdlm.train.loop import train

    out = work / "mdm_sft"
    return _timed(
        train, _baseline_recipe(recipe, steps), out, teacher=str(teacher_dir), student=str(converted), console=False
    )


def _eval(recipe, model_dir: Path, out: Path, teacher_results: dict | None) -> dict:
    """The recipe's evaluation of ``model_dir`` against the teacher (read back when already written)."""
    from opdlm.pipeline.stages import eval_model_stage

    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    return eval_model_stage(recipe, model_dir, out, teacher_results)


def _train_facts(train_dir: Path) -> dict:
    """Training tokens, FLOPs and wall time of a training folder.

    Wall time runs from ``run.json`` (written once, when the first stage's models have loaded) to the
    last metrics line, so a staged run counts every stage (``params.json`` is rewritten per stage).
    """
    from opdlm.train.folder import TrainingFolder

    folder = TrainingFolder(train_dir)
    summary = folder.summary()
    first = folder.run_file if folder.run_file.is_file() else train_dir / "params.json"
    start = first.stat().st_mtime
    return {
        "rollout_steps": summary.get("rollout_step"),
        "training_tokens": summary.get("cumulative_train_tokens"),
        "flops": summary.get("flops", {}).get("total"),
        "train_wall_s": round(folder.metrics_file.stat().st_mtime - start, 1),
    }


COLUMNS = (
    ("accuracy", "accuracy"),
    ("agreement", "agreement (LCS F1)"),
    ("prefix_agreement", "prefix agreement"),
    ("exact_match", "exact match"),
    ("teacher_nll", "teacher NLL/token"),
    ("nll_ratio", "NLL ratio"),
    ("repetition", "repeated 4-grams"),
    ("mean_length", "mean length"),
    ("finished_rate", "finished"),
    ("tokens_per_step", "tokens/step"),
    ("training_tokens", "training tokens"),
    ("flops", "training FLOPs"),
    ("train_wall_s", "train wall s"),
    ("generation_s", "decode s"),
)


def _row(name: str, result: dict, train: dict | None) -> dict:
    kept = result.get("teacher_retention") or {}
    return {
        "model": name,
        **{k: result.get(k) for k in ("accuracy", "mean_length", "finished_rate", "tokens_per_step", "generation_s")},
        **{k: kept.get(k) for k in ("agreement", "prefix_agreement", "exact_match", "teacher_nll", "nll_ratio")},
        "repetition": kept.get("repetition"),
        **(train or {"training_tokens": 0, "flops": 0, "train_wall_s": 0}),
    }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and abs(v) >= 1e6:
        return f"{v:.3g}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="A finished pipeline run folder (its summary.json).")
    parser.add_argument("--out", required=True, type=Path, help="Where table.md and results.json go.")
    parser.add_argument("--recipe", default="configs/smollm2-135m.yaml")
    parser.add_argument("--work", type=Path, default=Path("runs/side-by-side"), help="Converted student, baseline.")
    parser.add_argument("--max-steps", type=int, default=200, help="Most baseline rollout steps to reach the budget.")
    parser.add_argument("--converted", type=Path, help="An already converted student (default: convert into --work).")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="An mdm_sft training folder already trained on the teacher's completions (data.responses: teacher_greedy; "
        "e.g. the OPD run's steps), used instead of training one to the OPD run's tokens.",
    )
    parser.add_argument("overrides", nargs="*", help="Dotted recipe overrides (the pipeline run's, if it had any).")
    args = parser.parse_args()

    from opdlm.config.recipe import load_recipe
    from opdlm.pipeline.stages import convert_stage
    from opdlm.train.folder import TrainingFolder

    recipe = load_recipe(args.recipe, args.overrides)
    facts = json.loads((args.run / "summary.json").read_text())
    teacher_results = json.loads(Path(facts["teacher_results"]).read_text())
    opd_results = json.loads(Path(facts["student_results"]).read_text())
    opd_train = _train_facts(Path(facts["train_dir"]))
    bench = recipe.registry.gate_benchmark
    teacher_dir = Path(teacher_results[bench]["model"])
    args.work.mkdir(parents=True, exist_ok=True)

    converted = args.converted or args.work / "converted"
    if not (converted / "config.json").is_file():
        convert_stage(recipe, teacher_dir, converted)
    converted_results = _eval(recipe, converted, args.work / "eval-converted", teacher_results)

    mdm_dir = args.baseline or args.work / "mdm_sft"
    if not TrainingFolder(mdm_dir).summary_file.is_file():
        steps, tokens, data_s = _baseline_steps(
            _baseline_recipe(recipe), teacher_dir, opd_train["training_tokens"], args.max_steps
        )
        print(f"baseline data: teacher completions in {data_s:.0f}s; training {steps} steps ({tokens:.0f} tokens)")
        _train_baseline(recipe, steps, teacher_dir, converted, args.work)
    mdm_results = _eval(recipe, mdm_dir, args.work / "eval-mdm_sft", teacher_results)

    table = [
        _row("teacher (SmolLM2-135M-Instruct, autoregressive)", teacher_results[bench], None),
        _row("converted student, before training", converted_results[bench], None),
        _row("OPD student (the pipeline run)", opd_results[bench], opd_train),
        _row("mdm_sft baseline on the teacher's completions", mdm_results[bench], _train_facts(mdm_dir)),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"benchmark": bench, "run": str(args.run), "rows": table}, indent=2) + "\n"
    )
    lines = [
        f"| model | {' | '.join(title for _, title in COLUMNS)} |",
        f"| --- | {' | '.join('---' for _ in COLUMNS)} |",
    ] + [f"| {r['model']} | {' | '.join(_fmt(r.get(k)) for k, _ in COLUMNS)} |" for r in table]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    opd, mdm = table[2]["agreement"], table[3]["agreement"]
    ratio = opd / mdm if opd is not None and mdm else float("nan")
    print(f"opd_vs_mdm_agreement: {ratio:.2f}x (target: > 1.0)")


if __name__ == "__main__":
    main()
