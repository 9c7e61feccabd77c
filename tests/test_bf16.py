"""The recipes' precision on CPU: bf16 autocast with fp32 master weights and a bf16 teacher.

GPU runs use ``precision: bf16`` (the paper's recipe); no GPU is needed to find dtype errors in the
student forward, the chunked KL, the teacher or a checkpoint round trip, since CPU autocast runs
the same bf16 matmuls.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from opdlm.config.train import TrainConfig
from opdlm.models.student import Student, load_causal_lm, load_student
from opdlm.train.optimise import microbatch_loss
from opdlm.train.stepper import TorchStepper
from opdlm.train.targets import CausalTarget, teacher_target

# bf16 keeps 8 bits of mantissa: logits carry ~0.4% relative error, and the KL, a sum of
# p * (log p_t - log p_s) over the vocabulary, inherits a few times that (measured here: 0.06%).
BF16_LOSS_RTOL = 0.02


def _batch(student, rows=3, prompt_len=5, response_len=12, block_size=4):
    from opdlm.train.batch import make_rows
    from opdlm.train.loss_mask import response_loss_mask
    from opdlm.train.states import select_one_per_block

    g = torch.Generator().manual_seed(0)
    vocab = len(student.tokenizer) - 1
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (prompt_len, 2, prompt_len - 1)][:rows]
    responses = torch.randint(3, vocab, (rows, response_len), generator=g)
    step_map = torch.randint(0, 4, (rows, response_len), generator=g) + 4 * (torch.arange(response_len) // block_size)
    lengths = torch.tensor([response_len, response_len - 3, response_len - 6])[:rows]
    masked = select_one_per_block(step_map, lengths, block_size, g)
    loss_mask = response_loss_mask(responses, lengths, student.meta.eos_token_ids, exclude_eos=True)
    resp = [r[:n].tolist() for r, n in zip(responses, lengths)]
    return make_rows(
        prompts, resp, torch.arange(rows), masked[:, :response_len], loss_mask, student.meta.pad_token_id, block_size
    )


class _Setup(NamedTuple):
    """What one training step of the loss needs: the student, the teacher target, the optimiser, the precision."""

    student: Student
    target: CausalTarget
    stepper: TorchStepper
    autocast_dtype: torch.dtype | None


CHUNK = 5  # loss positions per KL chunk: several chunks per micro-batch


def _context(student_dir: Path, teacher_dir: Path, precision: str) -> _Setup:
    bf16 = precision == "bf16"
    cfg = TrainConfig(precision=precision, gradient_checkpointing=True, kl_chunk_size=CHUNK, micro_batch_size=3)
    student = load_student(student_dir, device="cpu", dtype="fp32", backend="sdpa")
    student.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    teacher, _ = load_causal_lm(teacher_dir, "cpu", "bf16" if bf16 else "fp32", "sdpa")
    teacher.requires_grad_(False)
    return _Setup(
        student, teacher_target(teacher, "sdpa"), TorchStepper(student.model, cfg), torch.bfloat16 if bf16 else None
    )


def _step(ctx: _Setup, rows):
    ctx.student.model.train()
    loss, _ = microbatch_loss(ctx.student, ctx.target, rows, 4, chunk_size=CHUNK, autocast_dtype=ctx.autocast_dtype)
    ctx.stepper.backward(loss)
    grads = {n: p.grad.detach().clone() for n, p in ctx.student.model.named_parameters() if p.grad is not None}
    ctx.stepper.step(1e-3)
    return float(loss.detach()), grads


def test_one_bf16_opd_step_matches_fp32(tiny_student_dir, tiny_teacher_dir):
    fp32 = _context(tiny_student_dir, tiny_teacher_dir, "fp32")
    bf16 = _context(tiny_student_dir, tiny_teacher_dir, "bf16")
    assert next(bf16.target.model.parameters()).dtype == torch.bfloat16
    rows = _batch(fp32.student)
    loss32, grads32 = _step(fp32, rows)
    loss16, grads16 = _step(bf16, rows)
    assert loss32 > 0
    assert abs(loss16 - loss32) <= BF16_LOSS_RTOL * loss32, (loss16, loss32)
    # master weights and their gradients stay fp32; every gradient is finite and points the same way
    assert grads16.keys() == grads32.keys()
    for name, g in grads16.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
    flat16 = torch.cat([g.flatten() for g in grads16.values()])
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.99
    assert all(p.dtype == torch.float32 for p in bf16.student.model.parameters())


def test_bf16_run_with_flash_requested_falls_back_resumes_and_exports(tiny_teacher_dir, tmp_path):
    """A user's GPU recipe on a CPU box: bf16 + gradient checkpointing + flash teacher; stop and resume."""
    from safetensors.torch import load_file

    from opdlm.config.recipe import load_recipe
    from opdlm.config.sampler import SamplerConfig
    from opdlm.sampling.block_sampler import BlockDiffusionSampler
    from opdlm.train.loop import train

    repo = Path(__file__).resolve().parents[1]
    stages = (
        "[{name: short, rollout_steps: 1, length: {start: 8, end: 8}}, {name: full, rollout_steps: 1, length: {start: "
        "8, end: 8}}]"
    )
    recipe = load_recipe(
        repo / "configs" / "tiny.yaml",
        [
            "train.prompts_per_rollout=2",
            "train.optimizer_steps_per_rollout=1",
            "train.micro_batch_size=2",
            "train.num_prompts=8",
            f"train.stages={stages}",
            "train.precision=bf16",
            "train.gradient_checkpointing=true",
            "train.teacher_attn_backend=flash_attention_2",
        ],
    )
    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="flash_attention_2 cannot run.*uses sdpa instead"):
        train(recipe, out, teacher=str(tiny_teacher_dir), until_stage="short", console=False)
    with pytest.warns(RuntimeWarning, match="flash_attention_2 cannot run"):
        train(recipe, out, teacher=str(tiny_teacher_dir), console=False)  # resumes from the bf16 run's checkpoint
    weights = load_file(str(out / "model.safetensors"))
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    student = load_student(out, device="cpu", dtype="bf16")
    cfg = SamplerConfig(block_size=4, denoise_steps_per_block=4, max_new_tokens=8)
    batch = BlockDiffusionSampler(student).generate([[5, 6, 7]], cfg, decode_text=False)
    assert len(batch.response_ids[0]) >= 1
