"""Peak memory of one OPD step at Qwen3's vocabulary (151,936): the trainer's chunked KL vs a naive one.

Side by side in one run, on the same tiny-hidden Qwen3 teacher/student pair and the same batch:

* ``naive``: what a straightforward implementation does: full ``(B, T, V)`` logits of the student over
  ``[prompt | clean | noisy]`` and of the teacher over ``prompt + response``, an fp32 log-softmax of
  both, the KL at the masked positions.
* ``chunked``: the trainer's own step (:func:`opdlm.train.optimise.microbatch_loss`): hidden states of the
  loss positions only, output head + log-softmax + KL chunk by chunk, the student's chunks
  recomputed in backward. Full-vocabulary KL (the 0.6B/1.7B recipes).
* ``chunked_top16``: the same with the teacher's top-16 slice (the 4B/8B recipes).

Each variant runs in its own process: models, optimizer state and one warm-up step first, then the
measured step (forward, backward, AdamW). Memory is the step's peak above what was resident before
it (CPU: the process's resident-set high-water mark, reset through ``/proc/self/clear_refs``; CUDA:
``max_memory_allocated``). The three losses are printed too: full chunked and naive must agree.

With ``--lengths 512,1024,2048`` it measures instead the trainer's own step (``chunked``) of a
Qwen3-0.6B-shaped student and teacher (full width: hidden 1024, 16/8 heads, head_dim 128, MLP 3072,
vocabulary 151,936; ``--layers`` decoder layers, 2 by default so that it fits a shared CPU box) with
gradient checkpointing, at each rollout length, and reports peak memory per rollout token. A
least-squares line through those peaks gives the curriculum's end (4000 tokens): the line is the
estimate where attention memory is linear in length (flash/flex kernels on GPU); a parabola through
them is the upper estimate for CPU SDPA, which materialises the ``(T, T)`` scores. The missing
layers add their checkpointed inputs, ``(28 - layers) x T x hidden x 4`` bytes per row, printed too.

Usage:
    python benchmarks/opd_memory.py [--rows 4] [--prompt-len 16] [--response-len 128] [--hidden 64]
    python benchmarks/opd_memory.py --lengths 512,1024,2048 [--rows 1] [--layers 2] [--prompt-len 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

QWEN3_VOCAB = 151_936
VARIANTS = ("naive", "chunked", "chunked_top16")
QWEN3_0_6B_LAYERS, QWEN3_0_6B_HIDDEN = 28, 1024
QWEN3_0_6B_LAYER_PARAMS = 1024 * (2048 + 1024 + 1024) + 2048 * 1024 + 3 * 1024 * 3072  # q, k, v, o, MLP
CURRICULUM_END = 4000  # METHOD §5: 100 -> 4000 tokens


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMeter:
    """Peak bytes above the starting level, for the device the step runs on."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _rss_kib("VmRSS") * 1024

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _rss_kib("VmHWM") * 1024 - self.base


def build_models(root: Path, hidden: int, full_width_layers: int | None = None) -> tuple[Path, Path]:
    """A random Qwen3 teacher with 151,936 embedding rows and its converted student.

    ``full_width_layers`` None: tiny hidden size ``hidden``, 2 layers. Otherwise Qwen3-0.6B's width
    with that many layers.
    """
    from opdlm.sources.convert import convert_teacher
    from opdlm.testing.tiny import build_char_tokenizer, make_tiny_causal_lm

    tok = build_char_tokenizer()
    if full_width_layers is None:
        teacher = make_tiny_causal_lm(
            root / "teacher", "qwen3", padded_rows=QWEN3_VOCAB - len(tok), hidden_size=hidden, num_layers=2
        )
    else:
        import transformers

        from opdlm.testing.qwen3 import qwen3_06b_config

        cfg = qwen3_06b_config(full_width_layers)
        cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "teacher")
        tok.save_pretrained(root / "teacher")
        teacher = root / "teacher"
    student = convert_teacher(teacher, root / "student", block_size=4)
    return teacher, student


def make_batch(student, rows: int, prompt_len: int, response_len: int, block_size: int):
    """Random prompts and responses; one state per block drawn from a random step map (as in training)."""
    from opdlm.train.batch import make_rows
    from opdlm.train.loss_mask import response_loss_mask
    from opdlm.train.states import select_one_per_block

    g = torch.Generator().manual_seed(0)
    vocab = len(student.tokenizer) - 1  # real tokens, not the mask
    prompts = torch.randint(3, vocab, (rows, prompt_len), generator=g).tolist()
    responses = torch.randint(3, vocab, (rows, response_len), generator=g)
    step_map = torch.randint(0, 4, (rows, response_len), generator=g) + 4 * (torch.arange(response_len) // block_size)
    lengths = torch.full((rows,), response_len)
    masked = select_one_per_block(step_map, lengths, block_size, g)
    loss_mask = response_loss_mask(responses, lengths, student.meta.eos_token_ids, exclude_eos=True)
    return make_rows(
        prompts, responses.tolist(), torch.arange(rows), masked, loss_mask, student.meta.pad_token_id, block_size
    )


def naive_loss(student, teacher, mb, block_size: int) -> torch.Tensor:
    """Full logits of both models, full fp32 log-softmax, KL at the loss positions (per-row mean, summed)."""
    from opdlm.models.attention import attention_mask
    from opdlm.models.geometry import inference_geometry, prediction_rows, training_geometry
    from opdlm.train.student_forward import noisy_copy

    meta, backend = student.meta, student.backend
    P, L = mb.prompt_ids_BP.shape[1], mb.response_BL.shape[1]
    noisy = noisy_copy(mb.response_BL, mb.masked_BL, mb.lengths_B, meta.mask_token_id)
    geom = training_geometry(mb.prompt_lens_B, P, L, block_size, meta.prompt_attention)
    ids = torch.cat([mb.prompt_ids_BP, mb.response_BL, noisy], dim=1)
    s_logits = student.model(
        input_ids=ids,
        attention_mask=attention_mask(geom, backend, torch.float32),
        position_ids=geom.position_ids_BT,
        use_cache=False,
    ).logits
    s_logp = torch.log_softmax(s_logits.float(), -1)[:, prediction_rows(P, L, block_size, meta.logit_shift, noisy=True)]
    with torch.no_grad():
        tgeom = inference_geometry(mb.prompt_lens_B, P, L, block_size=1)
        t_logits = teacher(
            input_ids=torch.cat([mb.prompt_ids_BP, mb.response_BL], 1),
            attention_mask=attention_mask(tgeom, backend, torch.float32),
            position_ids=tgeom.position_ids_BT,
            use_cache=False,
        ).logits
        t_logp = torch.log_softmax(t_logits.float(), -1)[:, P - 1 : P + L - 1]
    kl_BL = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    w = mb.loss_BL.float()
    return ((kl_BL * w).sum(-1) / w.sum(-1).clamp(min=1)).sum()


def run_variant(variant: str, student_dir: Path, teacher_dir: Path, args) -> dict:
    """Load, warm up, then measure one step of ``variant``; returns peak bytes and the loss."""
    from opdlm.config.train import TrainConfig
    from opdlm.models.student import load_causal_lm, load_student
    from opdlm.train.optimise import microbatch_loss
    from opdlm.train.stepper import TorchStepper
    from opdlm.train.targets import teacher_target

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student = load_student(student_dir, device=str(device), dtype="fp32", backend="sdpa")
    teacher, _ = load_causal_lm(teacher_dir, str(device), "fp32", "sdpa")
    teacher.requires_grad_(False)
    if args.lengths:  # the per-length sweep measures the recipes' setting: gradient checkpointing on
        student.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    top_k = 16 if variant == "chunked_top16" else None
    stepper = TorchStepper(student.model, TrainConfig())
    target = teacher_target(teacher, "sdpa")
    mb = make_batch(student, args.rows, args.prompt_len, args.response_len, 4).to(device)

    def loss_of() -> torch.Tensor:
        if variant == "naive":
            return naive_loss(student, teacher, mb, 4)
        return microbatch_loss(student, target, mb, 4, top_k=top_k, chunk_size=args.chunk)[0]

    def step() -> float:
        student.model.train()
        loss = loss_of()
        stepper.backward(loss)
        stepper.step(1e-5)
        return float(loss.detach())

    step()  # warm-up: AdamW state and allocator caches exist before the measured step
    meter = PeakMeter(device)
    meter.start()
    loss = step()
    return {
        "variant": variant,
        "peak_bytes": meter.peak(),
        "loss": loss,
        "device": device.type,
        "loss_positions": int(mb.loss_BL.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="sequences in the step")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--response-len", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64, help="tiny hidden size: the vocabulary dominates memory")
    ap.add_argument("--chunk", type=int, default=128, help="train.kl_chunk_size of the chunked variants")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", help="comma-separated rollout lengths: the per-token sweep of the trainer's step")
    ap.add_argument("--layers", type=int, default=2, help="--lengths: decoder layers of the 0.6B-wide model")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.variant:
        print(json.dumps(run_variant(args.variant, args.models / "student", args.models / "teacher", args)))
        return
    if args.lengths:
        sweep(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_models(Path(tmp), args.hidden)
        results = {}
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", variant, "--models", tmp] + sys.argv[1:]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    first = results["naive"]
    print(
        f"one OPD step, vocabulary {QWEN3_VOCAB:,}, hidden {args.hidden}, {args.rows} rows x "
        f"({args.prompt_len} prompt + {args.response_len} response), {first['loss_positions']} loss positions, "
        f"device {first['device']}"
    )
    print(f"{'variant':<16}{'peak above resident (MiB)':>28}{'loss':>14}")
    for r in results.values():
        print(f"{r['variant']:<16}{r['peak_bytes'] / 2**20:>28.1f}{r['loss']:>14.6f}")
    if abs(results["chunked"]["loss"] - first["loss"]) > 1e-3 * max(1.0, abs(first["loss"])):
        raise SystemExit("chunked and naive losses disagree: the comparison is not of the same computation")
    top16 = first["peak_bytes"] / results["chunked_top16"]["peak_bytes"]
    print(f"naive / chunked top-16 KL: {top16:.2f}x")
    ratio = first["peak_bytes"] / results["chunked"]["peak_bytes"]
    print(f"opd_step_peak_memory_ratio: {ratio:.2f} (target: >= 3.0; naive full-vocab KL / chunked full-vocab KL)")


def _child(variant: str, models: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--models", models, *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(args) -> None:
    """Peak memory of the trainer's step per rollout token at each of ``args.lengths``, extrapolated to 4000."""
    lengths = [int(x) for x in args.lengths.split(",")]
    if len(lengths) < 3:
        raise SystemExit("--lengths needs at least three lengths (a line and a parabola are fitted)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        build_models(Path(tmp), args.hidden, full_width_layers=args.layers)
        for L in lengths:
            argv = [
                "--rows",
                str(args.rows),
                "--prompt-len",
                str(args.prompt_len),
                "--response-len",
                str(L),
                "--chunk",
                str(args.chunk),
                "--threads",
                str(args.threads),
                "--lengths",
                args.lengths,
                "--layers",
                str(args.layers),
            ]
            results.append(_child("chunked", tmp, argv))
            print(f"  L={L}: peak {results[-1]['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    device = results[0]["device"]
    print(
        f"one OPD step (trainer's chunked full-vocabulary KL, chunk {args.chunk}, gradient checkpointing, fp32), "
        f"Qwen3-0.6B width with {args.layers} of its {QWEN3_0_6B_LAYERS} layers, vocabulary {QWEN3_VOCAB:,}, "
        f"{args.rows} row(s) x ({args.prompt_len} prompt + L response), SDPA, device {device}"
    )
    print(f"{'L':>6}{'peak above resident (GiB)':>28}{'peak per rollout token (KiB)':>31}{'loss positions':>16}")
    xs = torch.tensor(lengths, dtype=torch.float64)
    ys = torch.tensor([r["peak_bytes"] for r in results], dtype=torch.float64)
    for L, r in zip(lengths, results):
        per_token_kib = r["peak_bytes"] / (args.rows * L) / 2**10
        print(f"{L:>6}{r['peak_bytes'] / 2**30:>28.2f}{per_token_kib:>31.1f}{r['loss_positions']:>16}")
    line = torch.linalg.lstsq(torch.stack([torch.ones_like(xs), xs], 1), ys[:, None]).solution.flatten()
    parabola = torch.linalg.lstsq(torch.stack([torch.ones_like(xs), xs, xs**2], 1), ys[:, None]).solution.flatten()
    intercept, slope_per_row = float(line[0]), float(line[1]) / args.rows
    T_end = args.prompt_len + 2 * CURRICULUM_END
    others = max(QWEN3_0_6B_LAYERS - args.layers, 0)
    # the other layers' checkpointed inputs (fp32 hidden states, per row) and their gradients (per step)
    missing_per_row = others * T_end * QWEN3_0_6B_HIDDEN * 4
    missing_grads = others * QWEN3_0_6B_LAYER_PARAMS * 4
    print(
        f"line: {intercept / 2**30:.2f} GiB per step (output-head gradient, AdamW temporaries) + "
        f"{slope_per_row / 2**10:.1f} KiB per rollout token per row"
    )
    at_end = intercept + slope_per_row * CURRICULUM_END * args.rows
    curved = float(parabola[2]) > 0
    upper = float(parabola[0] + parabola[1] * CURRICULUM_END + parabola[2] * CURRICULUM_END**2) if curved else None
    print(
        f"extrapolated to L={CURRICULUM_END} ({args.rows} row(s), {args.layers} layers): {at_end / 2**30:.2f} GiB on "
        "the line"
        + (
            f", {upper / 2**30:.2f} GiB on the parabola (quadratic attention scores)"
            if curved
            else ", no curvature measured"
        )
        + f"; the other {others} layers add {missing_per_row / 2**30:.2f} GiB per row of checkpointed inputs and "
        f"{missing_grads / 2**30:.2f} GiB of gradients"
    )
    rows_gpu = 8  # the paper's micro-batch
    full = intercept + missing_grads + rows_gpu * (slope_per_row * CURRICULUM_END + missing_per_row)
    print(
        f"opd_step_peak_gib_at_4000_for_8_rows: {full / 2**30:.1f} (target: <= 131; one H200's 139 GiB less the 0.6B "
        "fp32 weights and AdamW state and the bf16 teacher; 28 layers, line estimate)"
    )


if __name__ == "__main__":
    main()
