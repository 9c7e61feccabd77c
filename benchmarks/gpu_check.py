"""One prepared GPU check: versions, flex/sdpa/flash parity, sampler throughput, OPD step cost.

Run it once on one CUDA GPU (designed for an H200, under 8 minutes); it prints, in this order, and
never stops at the first failure (a failed section prints FAILED and its error, the rest still run):

1. CUDA, GPU and package versions;
2. FlexAttention vs SDPA parity: student logits on the training layout ``[prompt | clean | noisy]``
   (left-padded, block-structured prompts) and the sampler's tokens and step maps at temperature 0, block sizes 1, 4, 8
   (fp32, a 2-layer model of Qwen3-0.6B's width);
3. the frozen teacher's causal forward: time and logits of flash_attention_2 vs flex vs sdpa;
4. sampler throughput (tokens/s, tokens per step) at batch 1, 32 and 128 with rollouts of 512 tokens
   (the paper's rollout sampler, EOS ignored so every row writes 512 tokens) on a random
   Qwen3-0.6B-shaped model, against Hugging Face ``generate`` on the same model and lengths;
5. one OPD step (bf16 autocast, gradient checkpointing, chunked full-vocabulary KL, AdamW) at
   rollout length 2048 and 4000: time and peak memory;
6. the fraction of that step spent in the models' own forwards and backward (teacher body forward,
   student body forward + backward); the rest (masks, output heads and KL chunks, AdamW, glue) is
   overhead.

Its last line is ``gpu_rollout_speedup_vs_hf_at_128: X (target: >= 2.0)``. A random model is
unsure of every token (about 1 token per step), so that figure is the sampler's floor; the line
before it projects the speedup at the paper's 1.9 tokens per step from the measured time per step.

Needs, beyond a stock CUDA PyTorch (>= 2.5, for FlexAttention):
    pip install -e .            # opdlm and its core dependencies (transformers 5.x, tokenizers,
                                # safetensors, pydantic); no network or model download is used
    pip install -e '.[gpu]'     # optional: flash-attn, for the flash_attention_2 teacher rows
                                # (without it those rows print "skipped: flash-attn not installed")

Usage:
    python benchmarks/gpu_check.py                # the full check on cuda
    python benchmarks/gpu_check.py --smoke        # tiny shapes, runs anywhere (CPU: eager flex)
    python benchmarks/gpu_check.py --sections 1,5 # only some sections (a rerun after a fix)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

QWEN3_0_6B_LAYERS = 28
# --smoke: the same architecture scaled down until it runs in seconds anywhere
SMOKE_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    num_hidden_layers=2,
)
PAPER_TOKENS_PER_STEP = 1.9  # METHOD §3: threshold 0.9 at B=4


class Clock:
    """Wall-clock budget: expensive pieces are skipped (and say so) once it runs out."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def check(self, need_s: float, what: str) -> None:
        if self.left() < need_s:
            raise TimeoutError(f"{what}: skipped, {self.left():.0f} s of the budget left (needs ~{need_s:.0f} s)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device):
    """``(seconds, result)`` of one call, synchronised."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


@contextlib.contextmanager
def eager_flex_on_cpu(device: torch.device):
    """On CPU, Hugging Face's flex attention uncompiled (compiling costs ~37 s there); on cuda, as shipped."""
    if device.type == "cuda":
        yield
        return
    import warnings

    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    original = hf_flex.compile_friendly_flex_attention

    def eager(query, key, value, training=False, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return flex_attention(query, key, value, **kwargs)

    hf_flex.compile_friendly_flex_attention = eager
    try:
        yield
    finally:
        hf_flex.compile_friendly_flex_attention = original


class Models:
    """Random Qwen3-shaped models (built in memory, never downloaded) and their student wrappers."""

    def __init__(self, shape: dict, device: torch.device):
        """``shape``: overrides of Qwen3-0.6B's config (empty: the real widths, 151,936 rows)."""
        from opdlm.testing.tiny import build_char_tokenizer

        self.shape, self.device = shape, device
        self.tok = build_char_tokenizer()
        self.mask_id = len(self.tok)  # the first padded embedding row, as conversion picks it

    def causal_lm(self, layers: int | None, dtype: torch.dtype, backend: str, seed: int = 0):
        import transformers

        from opdlm.testing.qwen3 import qwen3_06b_config  # the one home of Qwen3-0.6B's shapes

        cfg = qwen3_06b_config(layers or self.shape.get("num_hidden_layers", QWEN3_0_6B_LAYERS))
        for key, value in self.shape.items():
            if key != "num_hidden_layers":
                setattr(cfg, key, value)
        cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = (
            self.tok.pad_token_id,
            self.tok.eos_token_id,
            self.tok.bos_token_id,
        )
        torch.manual_seed(seed)
        with torch.device(self.device):
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=backend)
        return model.eval()

    def student(self, model, backend: str, block_size: int = 4, stop_at_eos: bool = True):
        from opdlm.models.student import Student, StudentMeta

        if model.config._attn_implementation != backend:
            model.set_attn_implementation(backend)
        eos = [self.tok.eos_token_id] if stop_at_eos else []
        meta = StudentMeta(block_size, self.mask_id, False, eos, self.tok.pad_token_id, prompt_attention="block")
        return Student(model, self.tok, meta, backend)

    def prompts(self, n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
        """``n`` random prompts of lengths in ``[lo, hi]`` (different lengths: left padding is exercised)."""
        g = torch.Generator().manual_seed(seed)
        vocab = len(self.tok) - 1
        lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
        return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


def section_versions(args, models: Models) -> None:
    import importlib.metadata as md

    dev = models.device
    print(f"torch {torch.__version__} (cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()})")
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        print(f"device {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB")
    else:
        print("device cpu (no CUDA: smoke run only)")
    for pkg in ("transformers", "flash-attn", "deepspeed", "accelerate", "triton"):
        try:
            print(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg} not installed")


def _training_batch(models: Models, rows: int, P: int, L: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, P + 1, (rows,), generator=g)
    lens[0] = P
    prompts = torch.randint(5, len(models.tok) - 1, (rows, P), generator=g)
    prompts[torch.arange(P)[None, :] < (P - lens)[:, None]] = models.tok.pad_token_id
    clean = torch.randint(5, len(models.tok) - 1, (rows, L), generator=g)
    noisy = torch.where(torch.rand(rows, L, generator=g) < 0.5, torch.full_like(clean, models.mask_id), clean)
    d = models.device
    return prompts.to(d), lens.to(d), clean.to(d), noisy.to(d)


def section_parity(args, models: Models) -> None:
    from opdlm.config.sampler import SamplerConfig
    from opdlm.sampling.block_sampler import BlockDiffusionSampler
    from opdlm.train.student_forward import student_logits

    model = models.causal_lm(2, torch.float32, "sdpa", seed=1)
    P, L = (32, 64) if not args.smoke else (6, 16)
    new_tokens = 32 if not args.smoke else 8
    for bs in (1, 4, 8):
        batch = _training_batch(models, 3, P, L, seed=bs)
        logits = {}
        for backend in ("sdpa", "flex_attention"):
            s = models.student(model, backend, bs)
            with torch.no_grad():
                logits[backend] = student_logits(s.model, *batch, bs, False, backend, "block").float()
        diff = (logits["flex_attention"] - logits["sdpa"]).abs().max().item()
        cfg = SamplerConfig(
            block_size=bs,
            denoise_steps_per_block=bs,
            remasking="dynamic",
            threshold=0.9,
            temperature=0.0,
            max_new_tokens=new_tokens,
        )
        prompts = models.prompts(4, 3, 12, seed=bs)
        outs = {
            b: BlockDiffusionSampler(models.student(model, b, bs)).generate(prompts, cfg, decode_text=False)
            for b in ("sdpa", "flex_attention")
        }
        same_tokens = outs["flex_attention"].response_ids == outs["sdpa"].response_ids
        same_steps = outs["flex_attention"].step_map == outs["sdpa"].step_map
        verdict = "ok" if diff < 1e-3 and same_tokens and same_steps else "MISMATCH"
        print(
            f"block size {bs}: training-layout logits max|flex - sdpa| {diff:.2e}; sampler tokens equal {same_tokens}, "
            f"step maps equal {same_steps} ({new_tokens} tokens x {len(prompts)} prompts) -> {verdict}"
        )


def section_teacher(args, models: Models, clock: Clock) -> None:
    from opdlm.models.attention import FLASH, flash_unavailable_reason
    from opdlm.train.targets import teacher_hidden_states

    dtype = torch.bfloat16
    rows, P, L = (8, 256, 2048) if not args.smoke else (2, 8, 32)
    model = models.causal_lm(None, dtype, "sdpa", seed=2)
    prompts, lens, clean, _ = _training_batch(models, rows, P, L, seed=0)
    head = model.get_output_embeddings()
    backends = ["sdpa", "flex_attention", FLASH]
    ref = None
    print(
        f"teacher forward over {rows} rows x ({P} prompt + {L} response), bf16, {model.config.num_hidden_layers} layers"
    )
    for backend in backends:
        if backend == FLASH and (why := flash_unavailable_reason(models.device, dtype)):
            print(f"  {backend:<18} skipped: {why}")
            continue
        try:
            clock.check(30, f"teacher {backend}")
            model.set_attn_implementation(backend)
            run = lambda: teacher_hidden_states(model, prompts, lens, clean, backend)  # noqa: E731
            timed(run, models.device)  # warm-up (flex compiles here)
            times = []
            for _ in range(3):
                t, hidden = timed(run, models.device)
                times.append(t)
            logits = head(hidden[:, :: max(L // 64, 1)]).float()  # a strided slice: the full (B, L, V) would not fit
            if ref is None:
                ref, note = logits, "reference"
            else:
                note = f"max|logits - sdpa| {(logits - ref).abs().max().item():.3f} (bf16)"
            print(f"  {backend:<18} {statistics.median(times) * 1e3:9.1f} ms  {note}")
        except Exception as exc:  # one backend failing must not hide the others
            print(f"  {backend:<18} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    model.set_attn_implementation("sdpa")


def section_sampler(args, models: Models, clock: Clock, results: dict) -> None:
    from opdlm.config.train import paper_rollout_sampler
    from opdlm.sampling.autoregressive import generate_autoregressive
    from opdlm.sampling.block_sampler import BlockDiffusionSampler

    new_tokens = 512 if not args.smoke else 16
    batches = (1, 32, 128) if not args.smoke else (1, 2, 4)
    model = models.causal_lm(None, torch.bfloat16, "sdpa", seed=3)
    cfg = paper_rollout_sampler().with_overrides(max_new_tokens=new_tokens)
    lo, hi = (64, 128) if not args.smoke else (3, 9)
    print(
        f"random Qwen3-0.6B-shaped model ({model.config.num_hidden_layers} layers, bf16), "
        f"rollouts of {new_tokens} tokens "
        f"(EOS ignored), sampler B={cfg.block_size}, {cfg.denoise_steps_per_block} steps/block, {cfg.remasking} "
        f"threshold {cfg.threshold}, temperature {cfg.temperature}; prompts {lo}-{hi} tokens"
    )
    for n in batches:
        prompts = models.prompts(n, lo, hi, seed=n)
        line = f"  batch {n:3d}:"
        try:
            clock.check(45, f"sampler batch {n}")
            rows = {}
            for backend in ("flex_attention", "sdpa"):
                sampler = BlockDiffusionSampler(models.student(model, backend, cfg.block_size, stop_at_eos=False))
                gen = torch.Generator(device=models.device)
                warm = cfg.with_overrides(max_new_tokens=min(8 * cfg.block_size, new_tokens))
                sampler.generate(prompts, warm, gen.manual_seed(0), decode_text=False)  # compiles flex for this batch
                t, out = timed(
                    lambda: sampler.generate(prompts, cfg, gen.manual_seed(1), decode_text=False), models.device
                )
                tokens = sum(map(len, out.response_ids))
                steps = sum(out.num_steps(i) for i in range(len(out)))
                rows[backend] = (t, tokens, tokens / max(steps, 1), steps / len(out))
            model.set_attn_implementation("sdpa")
            ar = lambda: generate_autoregressive(  # noqa: E731
                model, models.tok, prompts, new_tokens, temperature=1.0, decode_text=False, stop_at_eos=False
            )
            ar_t, ar_out = timed(ar, models.device)
            ar_tokens = sum(map(len, ar_out.response_ids))
            for backend, (t, tokens, tps, steps) in rows.items():
                line += f" sampler[{backend}] {tokens / t:8.0f} tok/s ({tps:.2f} tokens/step, {t:6.2f} s) |"
            speedup = (rows["flex_attention"][1] / rows["flex_attention"][0]) / (ar_tokens / ar_t)
            per_step = (ar_t / new_tokens) / (rows["flex_attention"][0] / rows["flex_attention"][3])
            line += f" HF generate {ar_tokens / ar_t:8.0f} tok/s ({ar_t:6.2f} s) | speedup {speedup:.2f}x"
            results[n] = (speedup, per_step)
        except Exception as exc:
            line += f" FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(line, flush=True)


def section_opd_step(args, models: Models, clock: Clock) -> None:
    from opd_memory import PeakMeter, make_batch

    from opdlm.config.train import TrainConfig
    from opdlm.models.attention import attention_mask, causal_padding_mask, resolve_teacher_backend
    from opdlm.models.geometry import inference_geometry, training_geometry
    from opdlm.train.optimise import microbatch_loss
    from opdlm.train.stepper import TorchStepper
    from opdlm.train.student_forward import noisy_copy
    from opdlm.train.targets import teacher_target

    dev = models.device
    backend = "flex_attention" if dev.type == "cuda" else "sdpa"  # torch has no FlexAttention backward on CPU
    rows, P = (8, 128) if not args.smoke else (2, 8)
    lengths = (2048, 4000) if not args.smoke else (32, 64)
    cfg = TrainConfig(precision="bf16", gradient_checkpointing=True, micro_batch_size=rows, kl_chunk_size=1024)
    student_model = models.causal_lm(None, torch.float32, backend, seed=4)  # fp32 master weights
    student_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    student = models.student(student_model, backend)
    teacher_backend = resolve_teacher_backend(cfg.teacher_attn_backend, dev, torch.bfloat16, backend)
    teacher = models.causal_lm(None, torch.bfloat16, teacher_backend, seed=4).requires_grad_(False)
    stepper = TorchStepper(student_model, cfg)
    target = teacher_target(teacher, teacher_backend)
    print(
        f"one OPD step: {rows} rows x ({P} prompt + L response), student fp32 master + bf16 autocast with gradient "
        f"checkpointing ({backend}), teacher bf16 ({teacher_backend}), full-vocabulary KL in chunks of "
        f"{cfg.kl_chunk_size}, AdamW"
    )
    for L in lengths:
        try:
            clock.check(60, f"OPD step at L={L}")
            mb = make_batch(student, rows, P, L, 4).to(dev)

            def step() -> float:
                student_model.train()
                loss, _ = microbatch_loss(
                    student, target, mb, 4, chunk_size=cfg.kl_chunk_size, autocast_dtype=torch.bfloat16
                )
                stepper.backward(loss)
                stepper.step(1e-5)
                return float(loss.detach())

            timed(step, dev)  # warm-up: flex compiles forward and backward, AdamW state is allocated
            meter = PeakMeter(dev)
            meter.start()
            t_step, loss = timed(step, dev)
            peak = meter.peak()
            absolute = (
                f", {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated at peak" if dev.type == "cuda" else ""
            )
            # the models' own work: teacher body forward, student body forward + backward (same masks, inputs)
            noisy = noisy_copy(mb.response_BL, mb.masked_BL, mb.lengths_B, student.meta.mask_token_id)
            s_geom = training_geometry(mb.prompt_lens_B, P, L, 4, student.meta.prompt_attention)
            t_geom = inference_geometry(mb.prompt_lens_B, P, L, 1)
            t_mask, masks = timed(
                lambda: (
                    attention_mask(s_geom, backend, torch.float32),
                    causal_padding_mask(t_geom, teacher_backend, torch.bfloat16),
                ),
                dev,
            )
            s_ids = torch.cat([mb.prompt_ids_BP, mb.response_BL, noisy], 1)
            t_ids = torch.cat([mb.prompt_ids_BP, mb.response_BL], 1)

            def teacher_body():
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                    return teacher.model(
                        input_ids=t_ids, attention_mask=masks[1], position_ids=t_geom.position_ids_BT, use_cache=False
                    )

            def student_body():
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    h = student_model.model(
                        input_ids=s_ids, attention_mask=masks[0], position_ids=s_geom.position_ids_BT, use_cache=False
                    ).last_hidden_state
                h.float().square().mean().backward()
                student_model.zero_grad(set_to_none=True)

            t_teacher, _ = timed(teacher_body, dev)
            t_student, _ = timed(student_body, dev)
            model_s = t_teacher + t_student
            print(
                f"  L={L:5d}: step {t_step:6.2f} s, peak {peak / 2**30:6.2f} GiB above resident{absolute}, "
                f"{int(mb.loss_BL.sum())} loss tokens, loss {loss:.4f}"
            )
            print(
                f"           models' own forwards + backward {model_s:6.2f} s = {model_s / t_step:5.1%} of the step "
                f"(teacher body {t_teacher:.2f} s, student body fwd+bwd {t_student:.2f} s); overhead "
                f"{t_step - model_s:.2f} s (masks {t_mask:.2f} s, heads + KL chunks, AdamW, glue)"
            )
        except Exception as exc:
            print(f"  L={L:5d}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (minutes on CPU): checks the script, not the GPU")
    ap.add_argument(
        "--budget-s", type=float, help="skip expensive pieces once this much time is spent (default: 450 on cuda)"
    )
    ap.add_argument(
        "--sections", default="1,2,3,4,5", help="which sections to run (1 versions .. 5 OPD step), e.g. 1,4"
    )
    args = ap.parse_args()
    chosen = {int(x) for x in args.sections.split(",")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("gpu_check needs a CUDA device (or --smoke for a tiny run anywhere)")
    torch.backends.cuda.matmul.allow_tf32 = False  # parity is measured in true fp32
    models = Models(SMOKE_SHAPE if args.smoke else {}, device)
    clock = Clock(args.budget_s if args.budget_s is not None else (float("inf") if args.smoke else 450.0))
    speedups: dict[int, tuple[float, float]] = {}
    sections = [
        ("versions", lambda: section_versions(args, models)),
        ("flex vs sdpa parity", lambda: section_parity(args, models)),
        ("teacher forward: flash vs flex vs sdpa", lambda: section_teacher(args, models, clock)),
        ("sampler throughput vs HF generate", lambda: section_sampler(args, models, clock, speedups)),
        ("OPD step: time, peak memory, model fraction", lambda: section_opd_step(args, models, clock)),
    ]
    with eager_flex_on_cpu(device):
        for number, (title, run) in enumerate(sections, 1):
            if number not in chosen:
                continue
            print(f"== {title} ({time.perf_counter() - clock.start:.0f} s elapsed)", flush=True)
            try:
                run()
            except Exception:
                print("FAILED:\n" + "".join(traceback.format_exc().splitlines(keepends=True)[-6:]), end="")
            sys.stdout.flush()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"== done in {time.perf_counter() - clock.start:.0f} s")
    top = max(speedups) if speedups else None
    if top is not None:
        per_step = speedups[top][1]
        print(
            f"projected speedup at batch {top} and {PAPER_TOKENS_PER_STEP} tokens/step (a trained student): "
            f"{per_step * PAPER_TOKENS_PER_STEP:.2f}x (HF time per token / sampler time per step = {per_step:.2f})"
        )
    value = f"{speedups[128][0]:.2f}" if 128 in speedups else "n/a (the batch-128 run failed or was skipped)"
    print(f"gpu_rollout_speedup_vs_hf_at_128: {value} (target: >= 2.0)")


if __name__ == "__main__":
    main()
