"""Block sampler vs the teacher's Hugging Face ``generate`` (KV cache), side by side in one run.

Same model family, the same 16 held-out prompts (the suite's, or --benchmark's), greedy, the block
sampler at threshold 0.9 and block size 4 (dynamic remasking). Output lengths are made equal three ways:

* batch 1, answer length (headline): each prompt alone; both decode exactly as many tokens as the
  teacher's own answer (EOS included) with EOS stopping off, so both produce the same length and
  all of it is in-distribution text.
* batch 16, to EOS: both stop at EOS (cap --new-tokens); the generated token totals are printed
  next to the times (the student imitates the teacher, so they match closely). The block sampler
  batches continuously: each row moves to its next block as soon as its own block is committed and
  leaves at its EOS, so a row never waits for the slowest one. Its rows' forwards per committed token
  (every row of every model call, prefills included, over the tokens kept) is printed next to batch
  1's: continuous batching keeps them within 15%. The same decode with the model's own Hugging Face
  forward instead of the sampler's (``DecodeForward``) is timed next to it.
* --queue N: N prompts through 16 slots (a finished row's slot takes the next prompt) against HF
  ``generate`` in batches of 16.
* fixed --new-tokens with EOS ignored, batch 1 and 16: the tail past the answer is text neither
  model was trained to write; the student is unsure there and decodes ~1 token per step, so this
  line shows the floor, not normal use.

Usage:
    python benchmarks/sampler_speed.py [--student DIR --teacher DIR] [--new-tokens 64] [--threads 1] [--queue 64]
        [--benchmark gsm8k_heldout] [--repeats 5]

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


def _time_pair(fn_a, fn_b, repeats: int):
    """``(seconds_a, seconds_b, result_a, result_b)``: median times of ``fn_a`` and ``fn_b``, run
    alternately so machine noise hits both alike, and each one's last result."""
    fn_a(), fn_b()  # warm-up (allocator, kernels)
    times_a, times_b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result_a = fn_a()
        times_a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result_b = fn_b()
        times_b.append(time.perf_counter() - t0)
    return statistics.median(times_a), statistics.median(times_b), result_a, result_b


def _default_paths() -> tuple[Path, Path]:
    """The newest `make run` student (runs/tiny/<run>/student) and the teacher it was converted from."""
    found = sorted(Path("runs").glob("tiny/*/student/config.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(
            "no trained student found under runs/tiny/: run `make run` first or pass --student and --teacher"
        )
    student = found[-1].parent
    teacher = json.loads(found[-1].read_text()).get("opdlm_converted_from")
    if not teacher or not Path(teacher).is_dir():
        raise SystemExit(f"{student}: its teacher ({teacher}) is gone; pass --student and --teacher")
    return student, Path(teacher)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path)
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models gain nothing from more)")
    ap.add_argument("--queue", type=int, default=0, help="also decode this many prompts through 16 slots (0: skip)")
    ap.add_argument(
        "--benchmark",
        default="synthetic",
        help="whose held-out prompts to decode, formatted as `opdlm eval` formats them (gsm8k_heldout for SmolLM2)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from opdlm.config.eval import EvalConfig
    from opdlm.config.sampler import SamplerConfig
    from opdlm.data.prompting import encode_prompts, format_prompt
    from opdlm.eval.benchmarks import get_benchmark, load_benchmark
    from opdlm.models.student import load_causal_lm, load_student
    from opdlm.sampling.autoregressive import generate_autoregressive
    from opdlm.sampling.block_sampler import BlockDiffusionSampler

    student_dir, teacher_dir = (args.student, args.teacher) if args.student else _default_paths()
    student = load_student(student_dir, device="cpu", dtype="fp32")
    teacher, tok = load_causal_lm(teacher_dir or student_dir, device="cpu", dtype="fp32")
    bench = get_benchmark(args.benchmark)
    rows = load_benchmark(args.benchmark, EvalConfig().data_dir, limit=max(16, args.queue))
    if len(rows) < 16:
        raise SystemExit(f"--benchmark {args.benchmark}: {len(rows)} rows, 16 needed")
    texts = [
        format_prompt(
            tok,
            bench.question_text(r),
            domain=r.domain,
            math_suffix=bench.math_suffix,
            enable_thinking=student.meta.enable_thinking,
        )
        for r in rows
    ]
    all_prompts = encode_prompts(tok, texts)
    prompts = all_prompts[:16]
    no_eos = BlockDiffusionSampler(
        dataclasses.replace(student, meta=dataclasses.replace(student.meta, eos_token_ids=[]))
    )
    with_eos = BlockDiffusionSampler(student)

    def cfg(n: int) -> SamplerConfig:
        return SamplerConfig(
            block_size=student.meta.block_size,
            denoise_steps_per_block=student.meta.block_size,
            remasking="dynamic",
            threshold=0.9,
            max_new_tokens=n,
        )

    def ar(batch, n, stop):
        return generate_autoregressive(teacher, tok, batch, n, decode_text=False, stop_at_eos=stop)

    print(
        f"student={student_dir} teacher={teacher_dir} threads={args.threads} prompts={len(prompts)} "
        f"({args.benchmark}, mean {statistics.mean(map(len, prompts)):.0f} prompt tokens)"
    )
    ratios = {}

    # batch 1 at the teacher's answer length: identical lengths, all in-distribution
    lengths = [len(ar([p], args.new_tokens, True).response_ids[0]) for p in prompts]
    runs = [(p, n) for p, n in zip(prompts, lengths)]
    block_s, ar_s, outs, _ = _time_pair(
        lambda: [no_eos.generate([p], cfg(n), decode_text=False) for p, n in runs],
        lambda: [ar([p], n, False) for p, n in runs],
        args.repeats,
    )
    forwards = sum(o.num_forwards[0] for o in outs)
    ratios["answer_b1"] = ar_s / block_s
    print(
        f"batch  1, answer length ({sum(lengths)} tokens over {len(runs)} prompts, "
        f"{statistics.mean(lengths):.1f} each): "
        f"block sampler {block_s * 1e3:8.1f} ms ({sum(lengths) / forwards:.2f} tokens/step, {forwards} forwards) | "
        f"HF generate {ar_s * 1e3:8.1f} ms ({sum(lengths)} forwards) | speedup {ratios['answer_b1']:.2f}x"
    )

    # batch 16 to EOS, with batch 1 to EOS on the same prompts for the forwards per token
    alone_stats = []
    for p in prompts:
        with_eos.generate([p], cfg(args.new_tokens), decode_text=False)
        alone_stats.append(with_eos.stats)
    b1_tokens = sum(st.tokens for st in alone_stats)
    b1_per_token = sum(st.row_forwards for st in alone_stats) / b1_tokens
    b1_queries = sum(st.query_tokens for st in alone_stats) / b1_tokens
    block_s, ar_s, block_out, ar_out = _time_pair(
        lambda: with_eos.generate(prompts, cfg(args.new_tokens), decode_text=False),
        lambda: ar(prompts, args.new_tokens, True),
        args.repeats,
    )
    b16_per_token = with_eos.stats.row_forwards_per_token
    ratios["eos_b16"] = ar_s / block_s
    print(
        f"batch 16, to EOS (student {sum(map(len, block_out.response_ids))} tokens, teacher "
        f"{sum(map(len, ar_out.response_ids))}): block sampler {block_s * 1e3:8.1f} ms "
        f"({block_out.mean_tokens_per_step():.2f} tokens/step, {with_eos.stats.forwards} model calls) | "
        f"HF generate {ar_s * 1e3:8.1f} ms | speedup {ratios['eos_b16']:.2f}x"
    )
    # the same decode with the model's own (Hugging Face) forward instead of the sampler's DecodeForward
    hf_forward = BlockDiffusionSampler(student, forward="hf")
    own_s, hf_fwd_s, _, hf_fwd_out = _time_pair(
        lambda: with_eos.generate(prompts, cfg(args.new_tokens), decode_text=False),
        lambda: hf_forward.generate(prompts, cfg(args.new_tokens), decode_text=False),
        args.repeats,
    )
    same = hf_fwd_out.response_ids == block_out.response_ids
    print(
        f"batch 16, to EOS, forward: the sampler's own ({'DecodeForward' if with_eos.fused else 'n/a: '}"
        f"{with_eos.fused_unsupported or ''}) {own_s * 1e3:8.1f} ms | the model's (HF) {hf_fwd_s * 1e3:8.1f} ms | "
        f"own forward {hf_fwd_s / own_s:.2f}x faster ({'same' if same else 'DIFFERENT'} tokens)"
    )
    b16_queries = with_eos.stats.query_tokens_per_token
    print(
        f"row forwards per committed token, to EOS: batch 1 {b1_per_token:.3f} | batch 16 {b16_per_token:.3f} "
        f"({(b16_per_token / b1_per_token - 1) * 100:+.1f}%; target: within 15%); query positions per token "
        f"(padding included): batch 1 {b1_queries:.2f} | batch 16 {b16_queries:.2f}"
    )

    if args.queue:
        queued = BlockDiffusionSampler(student, max_batch=16)
        batches = [all_prompts[i : i + 16] for i in range(0, len(all_prompts), 16)]
        block_s, ar_s, q_out, ar_outs = _time_pair(
            lambda: queued.generate(all_prompts, cfg(args.new_tokens), decode_text=False),
            lambda: [ar(b, args.new_tokens, True) for b in batches],
            args.repeats,
        )
        ratios["queue"] = ar_s / block_s
        print(
            f"{len(all_prompts)} prompts, 16 slots, to EOS (student {sum(map(len, q_out.response_ids))} tokens, "
            f"teacher {sum(len(r) for o in ar_outs for r in o.response_ids)}): block sampler {block_s * 1e3:8.1f} ms "
            f"({queued.stats.row_forwards_per_token:.3f} row forwards/token) | HF generate in batches of 16 "
            f"{ar_s * 1e3:8.1f} ms | speedup {ratios['queue']:.2f}x"
        )

    # fixed length, EOS ignored: the tail past the answer is off-distribution (the floor)
    n = args.new_tokens
    for bs in (1, 16):
        batch = prompts[:bs]
        block_s, ar_s, out, _ = _time_pair(
            lambda: no_eos.generate(batch, cfg(n), decode_text=False), lambda: ar(batch, n, False), args.repeats
        )
        ratios[f"fixed_b{bs}"] = ar_s / block_s
        print(
            f"batch {bs:2d}, fixed {n} tokens, EOS ignored: block sampler {block_s * 1e3:8.1f} ms "
            f"({out.mean_tokens_per_step():.2f} tokens/step) | HF generate {ar_s * 1e3:8.1f} ms | "
            f"speedup {ratios[f'fixed_b{bs}']:.2f}x"
        )
    print(f"block_sampler_speedup_batch1: {ratios['answer_b1']:.2f}x (target: >= 1.5x)")
    print(f"block_sampler_speedup_batch16_to_eos: {ratios['eos_b16']:.2f}x (target: >= 2.0x)")


if __name__ == "__main__":
    main()
