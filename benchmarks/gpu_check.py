"""One prepared GPU check: the numbers a first GPU run must answer, inside a time budget.

Run once on one CUDA GPU (an H100 or H200 lent for ~15 minutes, offline): the rows below, in order
of priority, on random Qwen3-0.6B-shaped models built in memory (nothing is downloaded). A row that
fails prints FAILED with its error and the rest still run; once ``--budget-s`` is spent the check
stops where it is and prints what it finished.

1. ``versions``: CUDA, GPU, Python and package versions, and where opdlm was imported from;
2. ``sampler``: :meth:`BlockDiffusionSampler.generate`'s tokens/s at batch 1, 32 and 128 (rollouts of
   512 tokens, the paper's rollout sampler, EOS ignored) against Hugging Face ``generate`` on the
   same model and lengths; on cuda for FlexAttention (the model's forward) and for sdpa (the
   sampler's own :class:`~opdlm.models.decode_forward.DecodeForward`);
3. ``opd_split``: one real OPD step (8 rollouts of 512 tokens, then bf16 autocast, gradient
   checkpointing, chunked full-vocabulary KL, AdamW) split into rollout, teacher forward, student
   forward + KL, backward and AdamW;
4. ``opd_memory``: the same step on 8 rows at rollout lengths 2048 and 4000 (the curriculum's end):
   time, its split and peak memory;
5. ``precision``: the loss and gradient of one batch in bf16 (bf16 teacher, bf16 autocast) vs fp32;
6. ``parity``: FlexAttention vs SDPA, student logits on the training layout and the sampler's tokens
   and step maps at temperature 0, block sizes 1, 4, 8 (fp32, 2 layers);
7. ``teacher``: the frozen teacher's causal forward, flash_attention_2 vs flex vs sdpa.

The flash_attention_2 rows say "skipped" unless flash-attn is installed: the GPU image has none, and
its wheel (built against one torch and CUDA) is not carried.

Every number is written to ``$OUT/gpu_check.json`` (``--json`` elsewhere) after each row, with a
readable table in ``gpu_check.txt`` beside it; the table is printed at the end. The last line is
``gpu_rollout_speedup_vs_hf_at_128: X (target: >= 2.0)``. A random model is unsure of every token
(about 1 token per step), so that figure is the sampler's floor; the line before it projects the
speedup at the paper's 1.9 tokens per step from the measured time per step.

The GPU machines have no package registry: ``make gpu-kit`` (infra/gpu/kit.py) downloads, where PyPI
is reachable, the wheels their image lacks and prints the one command to run there.

Usage:
    python benchmarks/gpu_check.py --budget-s 300           # the full check on cuda
    python benchmarks/gpu_check.py --smoke                  # toy shapes, runs anywhere (CPU: eager flex)
    python benchmarks/gpu_check.py --sections parity,teacher  # some rows only (a rerun after a fix)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

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
SECTIONS = ("versions", "sampler", "opd_split", "opd_memory", "precision", "parity", "teacher")
HEADLINE = "gpu_rollout_speedup_vs_hf_at_128"


class OutOfTime(BaseException):
    """The budget's alarm: a BaseException so that a row's ``except Exception`` cannot swallow it."""


class Skipped(Exception):
    """A row not started: too little of the budget left for it."""


class Clock:
    """Wall-clock budget: a row that would not fit is skipped; the alarm stops one that overruns."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def check(self, need_s: float, what: str) -> None:
        if self.left() < need_s:
            raise Skipped(f"{what}: skipped, {self.left():.0f} s of the budget left (needs ~{need_s:.0f} s)")

    def arm(self) -> None:
        """Raise :class:`OutOfTime` in the main thread once the budget is spent (no-op without a budget)."""
        if self.budget_s != float("inf"):

            def _ring(signum, frame):
                raise OutOfTime(f"the {self.budget_s:g} s budget is spent")

            signal.signal(signal.SIGALRM, _ring)
            signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01))

    def disarm(self) -> None:
        if self.budget_s != float("inf"):
            signal.setitimer(signal.ITIMER_REAL, 0)


class Report:
    """Every number the check measures, as rows ``(section, name, value, unit, note)``.

    Saved after each row (JSON and a text table, each written to a temporary name and renamed), so a
    run stopped from outside still leaves what it finished.
    """

    def __init__(self, json_path: Path | None, meta: dict):
        self.json_path, self.meta, self.rows = json_path, meta, []

    def add(self, section: str, name: str, value, unit: str = "", note: str = "") -> None:
        if isinstance(value, float):
            value = float(f"{value:.6g}")  # six significant digits (a 2e-7 difference must not read 0)
        self.rows.append({"section": section, "name": name, "value": value, "unit": unit, "note": note})
        self.save()

    def failed(self, section: str, name: str, exc: BaseException) -> None:
        text = str(exc).splitlines()[0] if str(exc) else ""
        self.add(section, name, None, "", f"FAILED: {type(exc).__name__}: {text}"[:300])

    def value(self, section: str, name: str):
        return next((r["value"] for r in self.rows if r["section"] == section and r["name"] == name), None)

    def table(self) -> str:
        width = max([len(r["name"]) for r in self.rows] + [10])
        lines, last = [], None
        for r in self.rows:
            if r["section"] != last:
                lines.append(f"[{r['section']}]")
                last = r["section"]
            v = r["value"]
            shown = "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append(f"  {r['name']:<{width}}  {shown:>12} {r['unit']:<8} {r['note']}".rstrip())
        return "\n".join(lines)

    def save(self) -> None:
        if self.json_path is None:
            return
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        for path, text in (
            (self.json_path, json.dumps({"meta": self.meta, "rows": self.rows}, indent=1) + "\n"),
            (self.json_path.with_suffix(".txt"), self.table() + "\n"),
        ):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)


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


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


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
        # the trainer's student backend: flex on cuda; sdpa on CPU (torch has no flex backward there)
        self.train_backend = "flex_attention" if device.type == "cuda" else "sdpa"

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


class TimedTarget:
    """A teacher target whose ``read`` (the teacher's forward over prompt + response) is timed."""

    def __init__(self, target, device: torch.device):
        self.target, self.device, self.seconds = target, device, 0.0

    def read(self, *args, **kwargs):
        t, out = timed(lambda: self.target.read(*args, **kwargs), self.device)
        self.seconds += t
        return out

    def __getattr__(self, name):
        return getattr(self.target, name)


class Trainer:
    """A student (fp32 master weights, gradient checkpointing), its bf16 teacher and AdamW, as the trainer runs them."""

    def __init__(self, models: Models, rows: int):
        from opdlm.config.train import TrainConfig
        from opdlm.models.attention import resolve_teacher_backend
        from opdlm.train.stepper import TorchStepper
        from opdlm.train.targets import teacher_target

        dev, backend = models.device, models.train_backend
        self.models, self.device, self.backend = models, dev, backend
        self.cfg = TrainConfig(precision="bf16", gradient_checkpointing=True, micro_batch_size=rows, kl_chunk_size=1024)
        self.model = models.causal_lm(None, torch.float32, backend, seed=4)
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.student = models.student(self.model, backend, stop_at_eos=False)  # rollouts of their full length
        self.teacher_backend = resolve_teacher_backend(self.cfg.teacher_attn_backend, dev, torch.bfloat16, backend)
        self.teacher = models.causal_lm(None, torch.bfloat16, self.teacher_backend, seed=4).requires_grad_(False)
        self.stepper = TorchStepper(self.model, self.cfg)
        self.target = TimedTarget(teacher_target(self.teacher, self.teacher_backend), dev)

    def describe(self) -> str:
        return (
            f"student fp32 master + bf16 autocast with gradient checkpointing ({self.backend}), teacher bf16 "
            f"({self.teacher_backend}), full-vocabulary KL in chunks of {self.cfg.kl_chunk_size}, AdamW; "
            f"{self.model.config.num_hidden_layers} layers"
        )

    def optimise(self, mb) -> dict:
        """One micro-batch's loss, backward and AdamW step; seconds of each part and the loss."""
        from opdlm.train.optimise import microbatch_loss

        dev, bs = self.device, self.student.meta.block_size
        self.model.train()
        self.target.seconds = 0.0
        t_loss, (loss, _) = timed(
            lambda: microbatch_loss(
                self.student, self.target, mb, bs, chunk_size=self.cfg.kl_chunk_size, autocast_dtype=torch.bfloat16
            ),
            dev,
        )
        t_backward, _ = timed(lambda: self.stepper.backward(loss), dev)
        t_adamw, _ = timed(lambda: self.stepper.step(1e-5), dev)
        return {
            "teacher": self.target.seconds,
            "student_forward_kl": t_loss - self.target.seconds,
            "backward": t_backward,
            "adamw": t_adamw,
            "loss": float(loss.detach()),
        }


def report_split(report: Report, section: str, prefix: str, parts: dict) -> float:
    """Rows for each part's seconds and share of their total; returns the total."""
    total = sum(parts.values())
    for part, seconds in parts.items():
        report.add(section, f"{prefix}{part}_s", seconds, "s", f"{seconds / total:.1%} of the step")
    report.add(section, f"{prefix}step_s", total, "s")
    return total


def section_versions(args, models: Models, clock: Clock, report: Report) -> None:
    import importlib.metadata as md

    import opdlm

    dev = models.device
    report.add("versions", "python", platform.python_version())
    report.add("versions", "torch", torch.__version__, note=f"cuda {torch.version.cuda}")
    report.add("versions", "opdlm", opdlm.__version__, note=str(Path(opdlm.__file__).parent))
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        report.add("versions", "device", p.name, note=f"capability {p.major}.{p.minor}")
        report.add("versions", "device_memory_gib", p.total_memory / 2**30, "GiB")
    else:
        report.add("versions", "device", "cpu", note="no CUDA: smoke run only")
    for pkg in ("transformers", "tokenizers", "accelerate", "pydantic", "triton", "flash-attn", "deepspeed"):
        try:
            report.add("versions", pkg, md.version(pkg))
        except md.PackageNotFoundError:
            report.add("versions", pkg, None, note="not installed")


def section_sampler(args, models: Models, clock: Clock, report: Report) -> None:
    from opdlm.config.train import paper_rollout_sampler
    from opdlm.sampling.autoregressive import generate_autoregressive
    from opdlm.sampling.block_sampler import BlockDiffusionSampler

    new_tokens = 512 if not args.smoke else 16
    batches = (1, 32, 128) if not args.smoke else (1, 2, 4)
    # sdpa decodes with the sampler's own forward (DecodeForward); "sdpa:hf" with the model's
    default = [models.train_backend] + (["sdpa"] if models.train_backend != "sdpa" else [])
    backends = args.sampler_backends.split(",") if args.sampler_backends else default
    model = models.causal_lm(None, torch.bfloat16, "sdpa", seed=3)
    cfg = paper_rollout_sampler().with_overrides(max_new_tokens=new_tokens)
    lo, hi = (64, 128) if not args.smoke else (3, 9)
    print(
        f"random Qwen3-0.6B-shaped model ({model.config.num_hidden_layers} layers, bf16), rollouts of {new_tokens} "
        f"tokens (EOS ignored), sampler B={cfg.block_size}, {cfg.denoise_steps_per_block} steps/block, "
        f"{cfg.remasking} threshold {cfg.threshold}, temperature {cfg.temperature}; prompts {lo}-{hi} tokens"
    )
    for n in batches:
        prompts = models.prompts(n, lo, hi, seed=n)
        try:
            clock.check(20, f"sampler batch {n}")
            rates = {}
            for spec in backends:
                backend, _, forward = spec.partition(":")
                sampler = BlockDiffusionSampler(
                    models.student(model, backend, cfg.block_size, stop_at_eos=False), forward=forward or "auto"
                )
                gen = torch.Generator(device=models.device)
                warm = cfg.with_overrides(max_new_tokens=min(8 * cfg.block_size, new_tokens))
                sampler.generate(prompts, warm, gen.manual_seed(0), decode_text=False)  # compiles flex for this batch
                t, out = timed(
                    lambda: sampler.generate(prompts, cfg, gen.manual_seed(1), decode_text=False), models.device
                )
                tokens = sum(map(len, out.response_ids))
                steps = sum(out.num_steps(i) for i in range(len(out))) / len(out)
                rates[spec] = (tokens / t, t / max(steps, 1))
                name = spec.replace(":", "_")
                own = "own forward" if sampler.fused is not None else "model's forward"
                report.add("sampler", f"batch{n}_sampler_{name}_tok_s", tokens / t, "tok/s", f"{t:.2f} s, {own}")
                report.add("sampler", f"batch{n}_sampler_{name}_tokens_per_step", tokens / n / max(steps, 1))
            model.set_attn_implementation("sdpa")
            ar = lambda: generate_autoregressive(  # noqa: E731
                model, models.tok, prompts, new_tokens, temperature=1.0, decode_text=False, stop_at_eos=False
            )
            ar_t, ar_out = timed(ar, models.device)
            ar_rate = sum(map(len, ar_out.response_ids)) / ar_t
            report.add("sampler", f"batch{n}_hf_generate_tok_s", ar_rate, "tok/s", f"{ar_t:.2f} s")
            rate, step_s = rates[backends[0]]
            report.add("sampler", f"batch{n}_speedup_vs_hf", rate / ar_rate, "x", f"sampler[{backends[0]}]")
            # HF's time per token over the sampler's time per denoising step: the speedup per token/step
            report.add("sampler", f"batch{n}_hf_token_s_over_sampler_step_s", (ar_t / new_tokens) / step_s, "x")
        except Skipped as exc:
            report.add("sampler", f"batch{n}", None, note=str(exc))
        except Exception as exc:
            report.failed("sampler", f"batch{n}", exc)


def section_opd_split(args, models: Models, clock: Clock, report: Report) -> None:
    """One OPD step as the trainer runs it: rollouts, state selection, then the optimiser's micro-batch."""
    from opdlm.config.train import paper_rollout_sampler
    from opdlm.train.loop import select_rows
    from opdlm.train.rollout import rollout

    rows, length = (8, 512) if not args.smoke else (2, 16)
    lo, hi = (64, 128) if not args.smoke else (3, 9)
    clock.check(40, "OPD step split")
    tr = Trainer(models, rows)
    cfg = paper_rollout_sampler().with_overrides(max_new_tokens=length)
    prompts = models.prompts(rows, lo, hi, seed=7)
    print(f"one OPD step: {rows} rollouts of {length} tokens (EOS ignored), then {tr.describe()}")
    ctx = SimpleNamespace(student=tr.student, cfg=tr.cfg)  # what select_rows reads of the run's context
    plan = SimpleNamespace(block_size=cfg.block_size, selection_seed=0)

    def step() -> dict:
        tr.model.eval()
        gen = torch.Generator(device=models.device).manual_seed(0)
        with torch.autocast(models.device.type, dtype=torch.bfloat16):
            t_rollout, episodes = timed(lambda: rollout(tr.student, prompts, [length] * rows, cfg, gen), models.device)
        t_select, (mb, _) = timed(lambda: select_rows(ctx, episodes, plan), models.device)
        parts = tr.optimise(mb.to(models.device))
        return {"rollout": t_rollout, "select_rows": t_select, **parts, "tokens_per_step": episodes.tokens_per_step}

    step()  # warm-up: flex compiles (rollout shapes, forward and backward), AdamW allocates its state
    parts = step()
    loss, tps = parts.pop("loss"), parts.pop("tokens_per_step")
    report_split(report, "opd_split", "", parts)
    report.add("opd_split", "rollout_tokens_per_step", tps)
    report.add("opd_split", "loss", loss)


def section_opd_memory(args, models: Models, clock: Clock, report: Report) -> None:
    from opd_memory import PeakMeter, make_batch

    rows, P = (8, 128) if not args.smoke else (2, 8)
    lengths = (2048, 4000) if not args.smoke else (32, 64)
    clock.check(40, "OPD step memory")
    tr = Trainer(models, rows)
    print(f"one OPD step on {rows} rows x ({P} prompt + L response), synthetic states: {tr.describe()}")
    for L in lengths:
        try:
            clock.check(45, f"OPD step at L={L}")
            mb = make_batch(tr.student, rows, P, L, tr.student.meta.block_size).to(models.device)
            tr.optimise(mb)  # warm-up: compiles for this length, AdamW state
            meter = PeakMeter(models.device)
            meter.start()
            parts = tr.optimise(mb)
            peak = meter.peak()
            loss = parts.pop("loss")
            report_split(report, "opd_memory", f"L{L}_", parts)
            report.add("opd_memory", f"L{L}_peak_above_resident_gib", peak / 2**30, "GiB", f"loss {loss:.4f}")
            if models.device.type == "cuda":
                report.add("opd_memory", f"L{L}_max_allocated_gib", torch.cuda.max_memory_allocated() / 2**30, "GiB")
        except Skipped as exc:
            report.add("opd_memory", f"L{L}", None, note=str(exc))
        except Exception as exc:
            report.failed("opd_memory", f"L{L}", exc)
        finally:
            if models.device.type == "cuda":
                torch.cuda.empty_cache()


def section_precision(args, models: Models, clock: Clock, report: Report) -> None:
    """The same batch's loss and gradient in bf16 (teacher weights, student autocast) and in fp32."""
    from opd_memory import make_batch

    from opdlm.train.optimise import microbatch_loss
    from opdlm.train.targets import teacher_target

    rows, P, L = (4, 64, 512) if not args.smoke else (2, 8, 32)
    clock.check(30, "bf16 vs fp32")
    backend = models.train_backend
    student_model = models.causal_lm(None, torch.float32, backend, seed=5)
    student = models.student(student_model, backend)
    teacher32 = models.causal_lm(None, torch.float32, backend, seed=6).requires_grad_(False)
    mb = make_batch(student, rows, P, L, student.meta.block_size).to(models.device)
    grads, losses = {}, {}
    for name, teacher_dtype, autocast in (("fp32", torch.float32, None), ("bf16", torch.bfloat16, torch.bfloat16)):
        # a bf16 copy of the same weights (Module.to converts in place)
        teacher = teacher32 if teacher_dtype == torch.float32 else copy.deepcopy(teacher32).to(torch.bfloat16)
        student_model.train()
        student_model.zero_grad(set_to_none=True)
        loss, _ = microbatch_loss(
            student, teacher_target(teacher, backend), mb, student.meta.block_size, autocast_dtype=autocast
        )
        loss.backward()
        losses[name] = float(loss.detach())
        grads[name] = [p.grad.detach().float().clone() for p in student_model.parameters() if p.grad is not None]
        report.add("precision", f"loss_{name}", losses[name], note=f"{rows} rows x ({P} + {L})")
    dot = sum(float((a * b).sum()) for a, b in zip(grads["fp32"], grads["bf16"]))
    n32 = sum(float(a.square().sum()) for a in grads["fp32"]) ** 0.5
    n16 = sum(float(b.square().sum()) for b in grads["bf16"]) ** 0.5
    report.add(
        "precision",
        "loss_rel_diff",
        abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"]),
        "",
        "|bf16 - fp32| / fp32",
    )
    report.add("precision", "grad_cosine", dot / (n32 * n16))
    report.add("precision", "grad_norm_ratio", n16 / n32, "", "bf16 / fp32")


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


def section_parity(args, models: Models, clock: Clock, report: Report) -> None:
    from opdlm.config.sampler import SamplerConfig
    from opdlm.sampling.block_sampler import BlockDiffusionSampler
    from opdlm.train.student_forward import student_logits

    model = models.causal_lm(2, torch.float32, "sdpa", seed=1)
    P, L = (32, 64) if not args.smoke else (6, 16)
    new_tokens = 32 if not args.smoke else 8
    for bs in (1, 4, 8):
        try:
            clock.check(15, f"parity at block size {bs}")
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
            same = outs["flex_attention"].response_ids == outs["sdpa"].response_ids
            same_steps = outs["flex_attention"].step_map == outs["sdpa"].step_map
            verdict = "ok" if diff < 1e-3 and same and same_steps else "MISMATCH"
            report.add("parity", f"B{bs}_logits_max_abs_diff", diff, "", verdict)
            report.add("parity", f"B{bs}_sampler_tokens_and_steps_equal", bool(same and same_steps), "", verdict)
        except Skipped as exc:
            report.add("parity", f"B{bs}", None, note=str(exc))
        except Exception as exc:
            report.failed("parity", f"B{bs}", exc)


def section_teacher(args, models: Models, clock: Clock, report: Report) -> None:
    from opdlm.models.attention import FLASH, flash_unavailable_reason
    from opdlm.train.targets import teacher_hidden_states

    dtype = torch.bfloat16
    rows, P, L = (8, 256, 2048) if not args.smoke else (2, 8, 32)
    model = models.causal_lm(None, dtype, "sdpa", seed=2)
    prompts, lens, clean, _ = _training_batch(models, rows, P, L, seed=0)
    head = model.get_output_embeddings()
    ref = None
    print(f"teacher forward over {rows} rows x ({P} prompt + {L} response), bf16")
    for backend in ["sdpa", "flex_attention", FLASH]:
        if backend == FLASH and (why := flash_unavailable_reason(models.device, dtype)):
            report.add("teacher", f"{backend}_ms", None, "ms", f"skipped: {why}")
            continue
        try:
            clock.check(20, f"teacher {backend}")
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
            report.add("teacher", f"{backend}_ms", statistics.median(times) * 1e3, "ms", note)
        except Skipped as exc:
            report.add("teacher", f"{backend}_ms", None, "ms", str(exc))
        except Exception as exc:
            report.failed("teacher", f"{backend}_ms", exc)
    model.set_attn_implementation("sdpa")


RUNNERS = {
    "versions": section_versions,
    "sampler": section_sampler,
    "opd_split": section_opd_split,
    "opd_memory": section_opd_memory,
    "precision": section_precision,
    "parity": section_parity,
    "teacher": section_teacher,
}


def parse_sections(text: str) -> list[str]:
    """Names or 1-based numbers, comma-separated, run in the order of :data:`SECTIONS`."""
    chosen = set()
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item.isdigit() and 1 <= int(item) <= len(SECTIONS):
            chosen.add(SECTIONS[int(item) - 1])
        elif item in SECTIONS:
            chosen.add(item)
        else:
            raise SystemExit(
                f"error: --sections: {item[:30]!r} is not one of {', '.join(SECTIONS)} (or 1-{len(SECTIONS)})"
            )
    return [s for s in SECTIONS if s in chosen]


def headline(report: Report) -> str:
    value = report.value("sampler", "batch128_speedup_vs_hf")
    shown = f"{value:.2f}" if value is not None else "n/a (the batch-128 row failed, was skipped or not run)"
    return f"{HEADLINE}: {shown} (target: >= 2.0)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy shapes (minutes on CPU): checks the script, not the GPU")
    ap.add_argument(
        "--budget-s", type=float, help="stop after this many seconds (default: 300 on cuda, none for --smoke)"
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"rows to run: {', '.join(SECTIONS)} (or numbers)")
    ap.add_argument(
        "--sampler-backends",
        help="attention backends of the sampler rows, comma-separated; 'sdpa:hf' = sdpa with the model's own "
        "forward (default: the trainer's, plus sdpa on cuda)",
    )
    ap.add_argument("--json", help="where the numbers go (default: $OUT/gpu_check.json when OUT is set)")
    args = ap.parse_args()
    chosen = parse_sections(args.sections)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("gpu_check needs a CUDA device (or --smoke for a tiny run anywhere)")
    torch.backends.cuda.matmul.allow_tf32 = False  # parity and the fp32 reference are measured in true fp32
    json_path = (
        Path(args.json)
        if args.json
        else (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    )
    budget = args.budget_s if args.budget_s is not None else (float("inf") if args.smoke else 300.0)
    clock = Clock(budget)
    meta = {"argv": sys.argv[1:], "smoke": args.smoke, "budget_s": budget if budget != float("inf") else None}
    report = Report(json_path, meta)
    models = Models(SMOKE_SHAPE if args.smoke else {}, device)
    stopped = None
    clock.arm()
    try:
        with eager_flex_on_cpu(device):
            for title in chosen:
                print(f"== {title} ({clock.elapsed():.0f} s elapsed)", flush=True)
                try:
                    RUNNERS[title](args, models, clock, report)
                except Skipped as exc:
                    report.add(title, "section", None, note=str(exc))
                except Exception as exc:
                    report.failed(title, "section", exc)
                    print("".join(traceback.format_exc().splitlines(keepends=True)[-6:]), end="")
                gc.collect()  # the section's models and optimiser state go before the next section builds its own
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    except OutOfTime as exc:
        stopped = str(exc)
    finally:
        clock.disarm()
    done = sorted({r["section"] for r in report.rows}, key=SECTIONS.index)
    report.meta.update(elapsed_s=round(clock.elapsed(), 1), stopped=stopped, sections_run=done)
    report.save()
    print(report.table())
    status = f"stopped: {stopped}; finished rows above" if stopped else "all chosen sections ran"
    print(f"== done in {clock.elapsed():.0f} s ({status})" + (f"; numbers in {json_path}" if json_path else ""))
    ratio = report.value("sampler", "batch128_hf_token_s_over_sampler_step_s")
    if ratio is not None:
        print(
            f"projected speedup at batch 128 and {PAPER_TOKENS_PER_STEP} tokens/step (a trained student): "
            f"{ratio * PAPER_TOKENS_PER_STEP:.2f}x (HF time per token / sampler time per step = {ratio:.2f})"
        )
    print(headline(report))


if __name__ == "__main__":
    main()
