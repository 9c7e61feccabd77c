"""Block sampler vs the teacher's Hugging Face ``generate`` (KV cache), side by side in one run.

Same tiny model family, same prompts, same output length (EOS disabled for both), batch 1 and
batch 16. The block sampler runs at threshold 0.9, block size 4 (dynamic remasking, greedy).

Usage:
    python benchmarks/sampler_speed.py [--student DIR --teacher DIR] [--new-tokens 64]

Without --student it uses the tiny pipeline's outputs under runs/ (run `make run` first), so the
student is a trained one whose confidence makes parallel decoding possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _default_paths() -> tuple[Path, Path]:
    for root in (Path("runs/tiny"), Path("runs/demo")):
        if (root / "student" / "config.json").is_file():
            cfg = json.loads((root / "student" / "config.json").read_text())
            return root / "student", Path(cfg.get("opdlm_converted_from", root / "teacher"))
    raise SystemExit("no trained student found under runs/: run `make run` first or pass --student and --teacher")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path)
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from opdlm.config.sampler import SamplerConfig
    from opdlm.data.prompting import encode_prompts, format_prompt
    from opdlm.models.student import load_causal_lm, load_student
    from opdlm.sampling.autoregressive import generate_autoregressive
    from opdlm.sampling.block_sampler import BlockDiffusionSampler

    student_dir, teacher_dir = (args.student, args.teacher) if args.student else _default_paths()
    student = load_student(student_dir, device="cpu", dtype="fp32")
    teacher, tok = load_causal_lm(teacher_dir or student_dir, device="cpu", dtype="fp32")
    try:
        from opdlm.data.synthetic import load_split

        questions = [r.question for r in load_split("eval", n=16)]
    except ImportError:
        questions = [f"What is {i} plus {i + 7}?" for i in range(16)]
    prompts = encode_prompts(tok, [format_prompt(tok, q) for q in questions])
    # same output length for both: no EOS stop
    student = dataclasses.replace(student, meta=dataclasses.replace(student.meta, eos_token_ids=[]))
    teacher.generation_config.eos_token_id = None
    cfg = SamplerConfig(block_size=4, denoise_steps_per_block=4, remasking="dynamic", threshold=0.9,
                        max_new_tokens=args.new_tokens)  # fmt: skip
    sampler = BlockDiffusionSampler(student)
    n = args.new_tokens
    print(f"student={student_dir} teacher={teacher_dir} new_tokens={n} threads={args.threads}")
    ratios = {}
    for bs in (1, 16):
        batch = prompts[:bs]
        block_s = _time(lambda: sampler.generate(batch, cfg, decode_text=False), args.repeats)
        out = sampler.generate(batch, cfg, decode_text=False)
        ar_s = _time(lambda: generate_autoregressive(teacher, tok, batch, n, decode_text=False), args.repeats)
        ratios[bs] = ar_s / block_s
        print(
            f"batch {bs:2d}: block sampler {block_s * 1e3:8.1f} ms ({out.mean_tokens_per_step():.2f} tokens/step, "
            f"{statistics.mean(out.num_forwards):.1f} forwards/seq) | HF generate {ar_s * 1e3:8.1f} ms | "
            f"speedup {ratios[bs]:.2f}x"
        )
    print(f"block_sampler_speedup_batch16: {ratios[16]:.2f}x")
    print(f"block_sampler_speedup_batch1: {ratios[1]:.2f}x (target: >= 1.5x)")


if __name__ == "__main__":
    main()
