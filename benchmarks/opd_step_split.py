"""Where an OPD rollout step's time goes: rollout, teacher, student, for each precision, side by side in one run.

One rollout step of the recipe's first stage (its prompts, lengths and batch sizes) is run through
the training loop's own parts: ``collect_episodes`` (the student's block-diffusion rollouts),
``select_rows``, then ``optimise``, whose teacher calls (the causal forward ``read`` and the output
head inside the chunked KL) are timed apart from the rest (the student's forward, backward and
AdamW). Each precision runs ``--steps`` steps on a fresh copy; the last step's split is reported.

Usage:
    python benchmarks/opd_step_split.py --config configs/smollm2-135m.yaml --teacher DIR --student DIR \
        [--precision bf16 fp32] [--steps 2] [key=value ...]

Prints one line per precision and, last, the headline: the bf16 step time over the fp32 one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


class _Clock:
    """Seconds spent inside wrapped callables."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def time_step(recipe, teacher: str, student: str, steps: int) -> dict:
    """Run ``steps`` rollout steps of ``recipe``; the last one's seconds by part and its token counts."""
    from opdlm.train.loop import collect_episodes, select_rows
    from opdlm.train.optimise import optimise
    from opdlm.train.plan import plan_step
    from opdlm.train.setup import setup_run
    from opdlm.train.targets import CausalTarget

    with tempfile.TemporaryDirectory(prefix="opd-split-") as tmp:
        ctx, _ = setup_run(recipe, Path(tmp) / "run", teacher, student)
        teacher_clock = _Clock()
        read, head = CausalTarget.read, CausalTarget.head
        CausalTarget.read = teacher_clock.wrap(read)
        # the head is a property returning the teacher's output layer; time each call of what it returns
        CausalTarget.head = property(lambda self: teacher_clock.wrap(head.fget(self)))
        try:
            for step in range(steps):
                plan = plan_step(ctx.cfg, step, len(ctx.rows), ctx.seed)
                teacher_clock.seconds = 0.0
                t0 = time.perf_counter()
                episodes, _ = collect_episodes(ctx, plan)
                t1 = time.perf_counter()
                rows, _ = select_rows(ctx, episodes, plan)
                result = optimise(ctx, rows, plan)
                t2 = time.perf_counter()
        finally:
            CausalTarget.read, CausalTarget.head = read, head
    return {
        "rollout_s": t1 - t0,
        "teacher_s": teacher_clock.seconds,
        "student_s": t2 - t1 - teacher_clock.seconds,
        "step_s": t2 - t0,
        "rollout_tokens": sum(map(len, episodes.responses)),
        "loss_tokens": int(result.loss_count_K.sum()),
        "tokens_per_step": round(episodes.tokens_per_step, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="Recipe YAML.")
    parser.add_argument("--teacher", required=True, help="Teacher directory.")
    parser.add_argument("--student", required=True, help="Converted student directory.")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=2, help="Rollout steps per precision; the last is reported.")
    parser.add_argument("overrides", nargs="*", help="Dotted recipe overrides, e.g. train.prompts_per_rollout=4.")
    args = parser.parse_args()

    from opdlm.config.recipe import load_recipe

    results = {}
    for precision in args.precision:
        recipe = load_recipe(args.config, [*args.overrides, f"train.precision={precision}"])
        r = time_step(recipe, args.teacher, args.student, args.steps)
        results[precision] = r
        share = {k: r[k] / r["step_s"] for k in ("rollout_s", "teacher_s", "student_s")}
        print(
            f"{precision}: step {r['step_s']:.1f}s = rollout {r['rollout_s']:.1f}s ({share['rollout_s']:.0%}) + "
            f"teacher {r['teacher_s']:.1f}s ({share['teacher_s']:.0%}) + student {r['student_s']:.1f}s "
            f"({share['student_s']:.0%}); {r['rollout_tokens']} rollout tokens at {r['tokens_per_step']} tokens/step, "
            f"{r['loss_tokens']} loss tokens",
            flush=True,
        )
    if {"bf16", "fp32"} <= results.keys():
        ratio = results["fp32"]["step_s"] / results["bf16"]["step_s"]
        print(f"opd_step_bf16_speedup: {ratio:.2f}x (target: > 1.0)")


if __name__ == "__main__":
    main()
