"""A few hundred OPD optimizer steps against a tiny teacher lower the forward KL clearly.

The teacher is a random tiny Qwen3 with a large init scale (peaky, prompt-dependent distributions,
so the converted student starts measurably away from it). Two measures: the training loss (KL on
the student's own states) early vs late, and the KL on a fixed set of held-out states (rollouts of
the untrained student on prompts never trained on) before vs after.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY

from opdlm.config.recipe import load_recipe
from opdlm.data.synthetic import load_split
from opdlm.models.student import load_causal_lm, load_student
from opdlm.sampling.block_sampler import BlockDiffusionSampler
from opdlm.train.batch import make_rows, pad_step_maps, right_pad
from opdlm.train.folder import TrainingFolder
from opdlm.train.kl import forward_kl_from_logprobs
from opdlm.train.loop import train
from opdlm.train.loss_mask import response_loss_mask
from opdlm.train.rollout import encode_rows
from opdlm.train.states import select_one_per_block
from opdlm.train.student_forward import noisy_copy, student_logits
from opdlm.train.targets import teacher_target_logprobs

STEPS = 75  # rollout steps x 4 optimizer steps = 300 optimizer steps
OVERRIDES = [
    "train.prompts_per_rollout=8",
    "train.optimizer_steps_per_rollout=4",
    "train.micro_batch_size=2",
    "train.num_prompts=256",
    "train.math_suffix=false",
    "train.lr=3e-3",
    "train.min_lr=3e-4",
    "train.warmup_rollout_steps=2",
    "train.checkpoint_every=1000",
    "train.num_threads=1",
    f"train.stages=[{{name: main, rollout_steps: {STEPS}, length: {{start: 16, end: 16}}}}]",
]


def heldout_states(student_dir, n: int = 16):
    """Rollouts of ``student_dir`` on held-out prompts, one state per block (fixed seeds)."""
    student = load_student(student_dir, device="cpu", dtype="fp32")
    recipe = load_recipe(TINY, OVERRIDES)
    prompts, _ = encode_rows(student.tokenizer, load_split("eval", n=n, seed=1), False, 256)
    cfg = recipe.train.rollout.with_overrides(max_new_tokens=16)
    out = BlockDiffusionSampler(student).generate(prompts, cfg, torch.Generator().manual_seed(0), decode_text=False)
    response_BL, lengths_B = right_pad(out.response_ids, student.meta.pad_token_id)
    masked_BL = select_one_per_block(
        pad_step_maps(out.step_map, response_BL.shape[1]), lengths_B, 4, torch.Generator().manual_seed(1)
    )
    loss_BL = response_loss_mask(response_BL, lengths_B, student.meta.eos_token_ids, exclude_eos=True)
    return make_rows(
        prompts, out.response_ids, torch.arange(len(prompts)), masked_BL, loss_BL, student.meta.pad_token_id, 4
    )


@torch.no_grad()
def mean_kl(student_dir, teacher_dir, rows) -> float:
    student = load_student(student_dir, device="cpu", dtype="fp32")
    teacher, _ = load_causal_lm(teacher_dir, "cpu", "fp32", student.backend)
    noisy = noisy_copy(rows.response_BL, rows.masked_BL, rows.lengths_B, student.meta.mask_token_id)
    s = torch.log_softmax(
        student_logits(
            student.model,
            rows.prompt_ids_BP,
            rows.prompt_lens_B,
            rows.response_BL,
            noisy,
            4,
            student.meta.logit_shift,
            student.backend,
        ),
        -1,
    )
    t = teacher_target_logprobs(teacher, rows.prompt_ids_BP, rows.prompt_lens_B, rows.response_BL, student.backend)
    return float(forward_kl_from_logprobs(t[rows.loss_BL], s[rows.loss_BL]).mean())


@pytest.mark.slow
def test_a_few_hundred_opd_steps_lower_the_kl_clearly(tmp_path):
    from opdlm.testing.tiny import make_tiny_causal_lm

    teacher = make_tiny_causal_lm(tmp_path / "teacher", "qwen3", init_std=0.3, hidden_size=32, num_layers=2)
    out = tmp_path / "opd"
    train(load_recipe(TINY, OVERRIDES), out, teacher=str(teacher), console=False)

    metrics = [json.loads(ln) for ln in TrainingFolder(out).metrics_file.read_text().splitlines()]
    assert metrics[-1]["optimizer_step"] == 4 * STEPS
    losses = [m["loss"] for m in metrics]
    early, late = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert late < 0.75 * early, f"training KL {early:.3f} -> {late:.3f}"

    states = heldout_states(TrainingFolder(out).converted)
    before, after = mean_kl(TrainingFolder(out).converted, teacher, states), mean_kl(out, teacher, states)
    assert int(states.loss_BL.sum()) > 50
    assert after < 0.75 * before, f"held-out KL {before:.3f} -> {after:.3f}"
