"""Probes per backend prove the block-causal pattern; with B=1 the student is the teacher."""

import pytest
import torch

from opdlm.models.geometry import inference_geometry
from opdlm.models.student import block_forward, load_causal_lm


def _forward(model, ids, B, backend, prompt_len, prompt_attention="causal"):
    n = ids.shape[0]
    geom = inference_geometry(
        torch.tensor([prompt_len] * n), prompt_len, ids.shape[1] - prompt_len, B, prompt_attention
    )
    return block_forward(model, ids, geom, backend, 0, ids.shape[1])


def _bump(ids, pos):
    out = ids.clone()
    out[0, pos] = (out[0, pos] + 1) % 90 + 5
    return out


@pytest.mark.parametrize("backend", ["sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.gpu)])
def test_probe_block_pattern(tiny_teacher_dir, backend):
    device = "cuda" if backend == "flex_attention" else "cpu"
    model, _ = load_causal_lm(tiny_teacher_dir, device=device, dtype="fp32", backend=backend)
    P, B = 5, 4
    ids = torch.randint(5, 90, (1, P + 12), generator=torch.Generator().manual_seed(0)).to(device)
    base = _forward(model, ids, B, backend, P)
    # a later token in the same block (response block 1 = positions P+4..P+7) changes earlier outputs
    same = ids.clone()
    same[0, P + 7] = (same[0, P + 7] + 1) % 90 + 5
    out = _forward(model, same, B, backend, P)
    assert not torch.allclose(out[0, P + 4], base[0, P + 4], atol=1e-6)
    # a token in a later block (block 2) changes nothing in blocks 0-1 nor the prompt
    later = ids.clone()
    later[0, P + 9] = (later[0, P + 9] + 1) % 90 + 5
    out = _forward(model, later, B, backend, P)
    torch.testing.assert_close(out[0, : P + 8], base[0, : P + 8], rtol=0, atol=1e-5)
    assert not torch.allclose(out[0, P + 8 :], base[0, P + 8 :], atol=1e-6)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_block_size_one_equals_teacher(tiny_teacher_dir, backend):
    model, _ = load_causal_lm(tiny_teacher_dir, device="cpu", dtype="fp32", backend=backend)
    ids = torch.randint(5, 90, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        teacher = model(input_ids=ids).logits
        student = _forward(model, ids, 1, backend, 6)
    torch.testing.assert_close(student, teacher, rtol=1e-5, atol=1e-5)


def test_block_size_one_left_padded_row_equals_teacher(tiny_teacher_dir):
    model, _ = load_causal_lm(tiny_teacher_dir, device="cpu", dtype="fp32", backend="sdpa")
    row = torch.randint(5, 90, (1, 12), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1)  # 3 pads before a 4-token prompt
    geom = inference_geometry(torch.tensor([4]), 7, 8, 1)
    with torch.no_grad():
        teacher = model(input_ids=row).logits
        student = block_forward(model, padded, geom, "sdpa", 0, 15)
    torch.testing.assert_close(student[:, 3:], teacher, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.gpu)])
def test_probe_block_prompt_pattern(tiny_teacher_dir, backend):
    """P = 7, B = 4: prompt blocks counted back from the response are [0, 3) (partial) and [3, 7)."""
    device = "cuda" if backend == "flex_attention" else "cpu"
    model, _ = load_causal_lm(tiny_teacher_dir, device=device, dtype="fp32", backend=backend)
    P, B = 7, 4
    ids = torch.randint(5, 90, (1, P + 8), generator=torch.Generator().manual_seed(4)).to(device)
    base = _forward(model, ids, B, backend, P, "block")

    def changed(out, pos):
        return not torch.allclose(out[0, pos], base[0, pos], atol=1e-6)

    # a later prompt token changes earlier prompt outputs of its own block, never an earlier block's
    out = _forward(model, _bump(ids, 5), B, backend, P, "block")
    assert changed(out, 3) and changed(out, 4)
    torch.testing.assert_close(out[0, :3], base[0, :3], rtol=0, atol=1e-5)
    out = _forward(model, _bump(ids, 2), B, backend, P, "block")  # the partial first block
    assert changed(out, 0) and changed(out, 1)
    # the response never changes a prompt output
    out = _forward(model, _bump(ids, P + 1), B, backend, P, "block")
    torch.testing.assert_close(out[0, :P], base[0, :P], rtol=0, atol=1e-5)
    # the causal variant: the same later prompt token changes no earlier output
    causal = _forward(model, ids, B, backend, P, "causal")
    out = _forward(model, _bump(ids, 5), B, backend, P, "causal")
    torch.testing.assert_close(out[0, :5], causal[0, :5], rtol=0, atol=1e-5)
