"""Benchmark: the recipe's evaluation of a student and its teacher on the synthetic benchmark, timed.

Scores the teacher (autoregressive decoding) and the student (block-diffusion sampler) on the same
rows with the recipe's eval section and sampler, on 2 CPU threads, and times each, model loading
included. Without ``--student`` the teacher is converted first (an unconverted student decodes the
teacher's weights block by block, which is the slow worst case: it rarely stops early).

    .venv/bin/python benchmarks/eval_speed.py --teacher DIR [--student DIR] [--config configs/tiny.yaml]

The last line is ``eval_student_plus_teacher_seconds: X (target: < 90)``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGET_SECONDS = 90


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, type=Path)
    parser.add_argument("--student", type=Path)
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    parser.add_argument("--limit", type=int, help="Rows (default: the recipe's eval.limit).")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    from opdlm.config.recipe import load_recipe
    from opdlm.eval.harness import evaluate
    from opdlm.sources.convert import convert_teacher

    recipe = load_recipe(args.config, [f"eval.limit={args.limit}"] if args.limit else [])
    config = recipe.eval.model_copy(update={"device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        student = args.student or convert_teacher(
            args.teacher, Path(tmp) / "student", block_size=recipe.convert.block_size
        )
        timings = {}
        for name, model_dir in (("teacher", args.teacher), ("student", student)):
            start = time.perf_counter()
            result = evaluate(
                model_dir, "synthetic", config, sampler=recipe.sampler, teacher_result=timings.get("teacher_result")
            )
            timings[name] = time.perf_counter() - start
            timings[f"{name}_result"] = result
            print(
                f"{name}: {result.n} rows in {timings[name]:.1f} s (generation {result.generation_s:.1f} s), "
                f"accuracy {result.accuracy:.3f}, {result.tokens_per_step:.2f} tokens/step, "
                f"mean length {result.mean_length:.1f}, {result.tokens_per_second:.0f} tokens/s"
            )
    total = timings["teacher"] + timings["student"]
    retention = timings["student_result"].retention
    print(f"retention: {retention if retention is not None else 'undefined'}")
    print(f"eval_student_plus_teacher_seconds: {total:.1f} (target: < {TARGET_SECONDS})")
    return 0 if total < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
