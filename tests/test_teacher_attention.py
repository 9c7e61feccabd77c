"""The teacher's attention backend: flash-attn where it can run, a clear fallback where it cannot.

flash-attn is never installed on CPU machines, so what runs here is the choice and the inputs
flash would get: the 2-D padding mask that Hugging Face unpads by, fed to SDPA (which builds the
causal mask from it the same way), must give the teacher's 4-D-mask hidden states exactly.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from opdlm.errors import OpdlmError
from opdlm.models.attention import FLASH, causal_padding_mask, flash_attn_installed, resolve_teacher_backend
from opdlm.models.geometry import inference_geometry
from opdlm.models.student import load_causal_lm, load_student
from opdlm.train.targets import teacher_hidden_states

pytestmark = pytest.mark.skipif(flash_attn_installed(), reason="pins the behaviour without flash-attn")


def test_explicit_flash_without_the_package_warns_once_and_falls_back():
    with pytest.warns(RuntimeWarning) as caught:
        backend = resolve_teacher_backend(FLASH, "cpu", torch.bfloat16)
    assert backend == "sdpa"
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "flash-attn package is not installed" in message and "opdlm[gpu]" in message
    assert "uses sdpa instead" in message


def test_flash_falls_back_to_the_runs_own_backend():
    with pytest.warns(RuntimeWarning, match="uses eager instead"):
        assert resolve_teacher_backend(FLASH, "cpu", torch.float32, fallback="eager") == "eager"


def test_auto_picks_the_runs_backend_silently_without_flash():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_teacher_backend("auto", "cpu", torch.float32) == "sdpa"
        assert resolve_teacher_backend("auto", "cpu", torch.float32, fallback="eager") == "eager"
        assert resolve_teacher_backend("sdpa", "cpu", torch.float32) == "sdpa"


def test_unknown_teacher_backend_is_one_clear_error():
    with pytest.raises(OpdlmError, match="unknown attention backend 'flash3'; choose from .*flash_attention_2"):
        resolve_teacher_backend("flash3", "cpu", torch.float32)


def test_student_never_loads_with_flash(tiny_student_dir):
    with pytest.raises(
        OpdlmError, match="unknown attention backend 'flash_attention_2'; choose from sdpa, eager, flex_attention"
    ):
        load_student(tiny_student_dir, device="cpu", dtype="fp32", backend=FLASH)


def test_flash_gets_the_2d_padding_mask_or_none():
    geom = inference_geometry(torch.tensor([2, 4]), 4, 3, block_size=1)
    assert torch.equal(causal_padding_mask(geom, FLASH, torch.bfloat16), torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7]))
    full = inference_geometry(torch.tensor([4, 4]), 4, 3, block_size=1)
    assert causal_padding_mask(full, FLASH, torch.bfloat16) is None  # no padding: plain causal flash
    with pytest.raises(ValueError, match="block size 1"):
        causal_padding_mask(inference_geometry(torch.tensor([4]), 4, 4, block_size=4), FLASH, torch.bfloat16)


def test_flash_inputs_give_the_same_teacher_states(tiny_teacher_dir):
    """The 2-D mask + position ids flash receives, under SDPA, equal the 4-D block-size-1 mask."""
    teacher, _ = load_causal_lm(tiny_teacher_dir, device="cpu", dtype="fp32", backend="sdpa")
    g = torch.Generator().manual_seed(3)
    prompt_lens = torch.tensor([3, 6, 1])
    P, L = 6, 5
    prompts = torch.randint(5, 90, (3, P), generator=g)
    prompts[torch.arange(P)[None, :] < (P - prompt_lens)[:, None]] = 0  # left padding
    response = torch.randint(5, 90, (3, L), generator=g)
    expected = teacher_hidden_states(teacher, prompts, prompt_lens, response, "sdpa")
    geom = inference_geometry(prompt_lens, P, L, block_size=1)
    with torch.no_grad():
        out = teacher.model(
            input_ids=torch.cat([prompts, response], 1),
            attention_mask=causal_padding_mask(geom, FLASH, torch.float32),
            position_ids=geom.position_ids_BT,
            use_cache=False,
        ).last_hidden_state[:, P - 1 : P + L - 1]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
