"""Teacher targets and the [prompt | clean | noisy] student forward against brute-force forwards."""

import pytest
import torch

from opdlm.models.attention import attention_mask
from opdlm.models.geometry import inference_geometry
from opdlm.models.student import load_causal_lm, load_student
from opdlm.sampling.block_sampler import left_pad
from opdlm.sources.convert import convert_teacher
from opdlm.train.student_forward import noisy_copy, student_logits
from opdlm.train.targets import teacher_target_logprobs

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
RESPONSES = [[20, 21, 22, 23, 24, 25, 26], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39], [40, 41]]


def _padded_responses(pad_id):
    length = max(map(len, RESPONSES))
    resp = torch.full((len(RESPONSES), length), pad_id, dtype=torch.long)
    for i, r in enumerate(RESPONSES):
        resp[i, : len(r)] = torch.tensor(r)
    return resp, torch.tensor([len(r) for r in RESPONSES])


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_teacher_targets_equal_an_explicit_loop_over_prefixes(tiny_teacher_dir, backend):
    teacher, tok = load_causal_lm(tiny_teacher_dir, device="cpu", dtype="fp32", backend=backend)
    prompt_ids, prompt_lens = left_pad(PROMPTS, tok.pad_token_id)
    resp, lengths = _padded_responses(tok.pad_token_id)
    targets = teacher_target_logprobs(teacher, prompt_ids, prompt_lens, resp, backend)
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            for j in range(len(r)):
                prefix = torch.tensor([p + r[:j]])
                ref = torch.log_softmax(teacher(input_ids=prefix).logits[0, -1], -1)
                assert torch.allclose(targets[i, j], ref, atol=1e-5), (i, j)


def _per_block_reference(model, prompt, clean, noisy, block_size, logit_shift):
    """Brute force: for each block b, forward prompt + clean blocks < b + noisy block b on its own."""
    out = []
    for b0 in range(0, len(clean), block_size):
        ids = prompt + clean[:b0] + noisy[b0 : b0 + block_size]
        n_resp = len(ids) - len(prompt)
        geom = inference_geometry(torch.tensor([len(prompt)]), len(prompt), n_resp, block_size)
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([ids]),
                attention_mask=attention_mask(geom, "sdpa", torch.float32),
                position_ids=geom.position_ids_BT,
            ).logits[0]
        width = len(noisy[b0 : b0 + block_size])
        rows = range(len(ids) - width, len(ids))
        for k, row in enumerate(rows):
            out.append(logits[row - 1] if logit_shift else logits[row])
            if logit_shift and k == 0:
                # first position of a block: predicted by the last clean token before it
                assert row - 1 == len(prompt) + b0 - 1
    return torch.stack(out)


@pytest.mark.parametrize("logit_shift", [False, True], ids=["noshift", "shift"])
@pytest.mark.parametrize("block_size", [4, 3])
def test_concatenated_forward_equals_separate_per_block_forwards(tiny_teacher_dir, tmp_path, logit_shift, block_size):
    out = convert_teacher(tiny_teacher_dir, tmp_path / "s", block_size=block_size, logit_shift=logit_shift)
    student = load_student(out, device="cpu", dtype="fp32", backend="sdpa")
    mask_id, pad_id = student.meta.mask_token_id, student.meta.pad_token_id
    prompt_ids, prompt_lens = left_pad(PROMPTS, pad_id)
    clean, lengths = _padded_responses(pad_id)
    masked = torch.rand(clean.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    noisy = noisy_copy(clean, masked, lengths, mask_id)
    with torch.no_grad():
        logits = student_logits(student.model, prompt_ids, prompt_lens, clean, noisy, block_size, logit_shift, "sdpa")
    for i, p in enumerate(PROMPTS):
        n = len(RESPONSES[i])
        n_blocked = min(-(-n // block_size) * block_size, clean.shape[1])  # the last block keeps its masked tail
        ref = _per_block_reference(
            student.model, p, clean[i, :n_blocked].tolist(), noisy[i, :n_blocked].tolist(), block_size, logit_shift
        )
        assert torch.allclose(logits[i, :n_blocked], ref, atol=1e-5), i


def test_noisy_copy_masks_selected_positions_and_everything_past_the_end():
    resp = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    masked = torch.tensor([[False, True, False, False], [True, False, False, False]])
    assert noisy_copy(resp, masked, torch.tensor([4, 2]), 99).tolist() == [[5, 99, 7, 8], [99, 6, 99, 99]]
