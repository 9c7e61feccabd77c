"""Pure training math against brute-force references: KL, curriculum, LR, states, loss mask, MDM masking."""

import math

import pytest
import torch

from opdlm.config.train import CurriculumStage, LengthSchedule
from opdlm.errors import ConfigError
from opdlm.train.curriculum import domain_cap, last_completed_stage, length_cap, ramp_fraction, stage_at, stage_end_step
from opdlm.train.kl import cross_entropy_chunked, forward_kl_chunked, forward_kl_from_logprobs
from opdlm.train.loss_mask import response_loss_mask
from opdlm.train.mdm import random_block_mask
from opdlm.train.schedule import learning_rate
from opdlm.train.states import select_all_rounds, select_one_per_block


def _logprobs(n, v, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 2, -1)


def _brute_kl(t, s, k=None):
    out = []
    for i in range(t.shape[0]):
        idx = sorted(range(t.shape[1]), key=lambda v: -float(t[i, v]))[: k or t.shape[1]]
        out.append(sum(math.exp(t[i, v]) * (float(t[i, v]) - float(s[i, v])) for v in idx))
    return torch.tensor(out, dtype=torch.float64)


def test_kl_of_identical_distributions_is_zero():
    p = _logprobs(6, 11, 0)
    assert torch.allclose(forward_kl_from_logprobs(p, p), torch.zeros(6), atol=1e-6)
    assert torch.allclose(forward_kl_from_logprobs(p, p, top_k=3), torch.zeros(6), atol=1e-6)


def test_kl_matches_brute_force_and_torch():
    t, s = _logprobs(5, 9, 1), _logprobs(5, 9, 2)
    ours = forward_kl_from_logprobs(t, s).double()
    assert torch.allclose(ours, _brute_kl(t, s), atol=1e-5)
    ref = torch.nn.functional.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(forward_kl_from_logprobs(t, s, top_k=4).double(), _brute_kl(t, s, k=4), atol=1e-5)


def test_top_k_with_full_vocabulary_equals_full_kl():
    t, s = _logprobs(4, 13, 3), _logprobs(4, 13, 4)
    assert torch.allclose(forward_kl_from_logprobs(t, s, top_k=13), forward_kl_from_logprobs(t, s))


def test_zero_probability_teacher_tokens_are_not_nan():
    t = torch.log(torch.tensor([[1.0, 0.0, 0.0]]))
    s = torch.log_softmax(torch.randn(1, 3), -1)
    assert torch.isfinite(forward_kl_from_logprobs(t, s)).all()


@pytest.mark.parametrize("top_k", [None, 4])
def test_a_student_with_an_added_mask_row_is_compared_on_the_teachers_vocabulary(top_k):
    """A full vocabulary (SmolLM2: 49,152) gains a mask row at conversion: the teacher gives it p = 0,
    exactly as if its distribution had one more column of probability zero."""
    t, s = _logprobs(5, 9, 5), _logprobs(5, 10, 6)  # the student has one more row
    t_padded = torch.cat([t, torch.full((5, 1), -math.inf, dtype=t.dtype)], -1)
    ours = forward_kl_from_logprobs(t, s, top_k=top_k)
    assert torch.allclose(ours, forward_kl_from_logprobs(t_padded, s, top_k=top_k), atol=1e-6)
    assert torch.allclose(ours.double(), _brute_kl(t, s[:, :9], k=top_k), atol=1e-5)
    with pytest.raises(ValueError, match="smaller than the teacher's"):
        forward_kl_from_logprobs(s, t)


@pytest.mark.parametrize("top_k", [None, 5])
def test_chunked_equals_unchunked_values_and_gradients(top_k):
    torch.manual_seed(0)
    t_head, s_head = torch.nn.Linear(8, 17, bias=False), torch.nn.Linear(8, 17, bias=False)
    t_hidden = torch.randn(23, 8)
    results = []
    for chunk in (23, 4, 1):
        s_hidden = torch.randn(23, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
        s_head.zero_grad()
        kl = forward_kl_chunked(t_hidden, s_hidden, t_head, s_head, top_k=top_k, chunk_size=chunk)
        kl.sum().backward()
        results.append((kl.detach(), s_hidden.grad.clone(), s_head.weight.grad.clone()))
    full = forward_kl_from_logprobs(
        torch.log_softmax(t_head(t_hidden), -1), torch.log_softmax(s_head(s_hidden.detach()), -1), top_k
    )
    for kl, g_hidden, g_head in results:
        assert torch.allclose(kl, full.detach(), atol=1e-6)
        assert torch.allclose(g_hidden, results[0][1], atol=1e-6)
        assert torch.allclose(g_head, results[0][2], atol=1e-6)


def test_padding_chunks_calls_the_heads_more_often_and_changes_nothing():
    calls = []
    t_head, s_head = torch.nn.Linear(8, 17, bias=False), torch.nn.Linear(8, 17, bias=False)
    s_head.register_forward_hook(lambda *a: calls.append(1))
    t_hidden, s_hidden = torch.randn(5, 8), torch.randn(5, 8)
    plain = forward_kl_chunked(t_hidden, s_hidden, t_head, s_head, chunk_size=2)
    n_plain, calls[:] = len(calls), []
    padded = forward_kl_chunked(t_hidden, s_hidden, t_head, s_head, chunk_size=2, min_chunks=5)
    assert (n_plain, len(calls)) == (3, 5) and torch.equal(plain, padded)
    empty = forward_kl_chunked(t_hidden[:0], s_hidden[:0], t_head, s_head, chunk_size=2, min_chunks=2)
    assert empty.shape == (0,)
    ce = cross_entropy_chunked(s_hidden, s_head, torch.arange(5), chunk_size=2, min_chunks=4)
    assert torch.equal(ce, cross_entropy_chunked(s_hidden, s_head, torch.arange(5), chunk_size=2))


def test_chunked_cross_entropy_matches_torch():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 17, bias=False)
    hidden, targets = torch.randn(10, 8), torch.randint(0, 17, (10,))
    ref = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="none")
    assert torch.allclose(cross_entropy_chunked(hidden, head, targets, chunk_size=3), ref, atol=1e-6)


def test_curriculum_values_at_known_steps():
    sched = LengthSchedule(start=100, end=4000, ramp_steps=100, shape="cos")
    assert length_cap(sched, 0, 4) == 100
    assert length_cap(sched, 100, 4) == 4000
    assert length_cap(sched, 250, 4) == 4000
    mid = 100 + 3900 * (1 - math.cos(math.pi / 4))
    assert length_cap(sched, 50, 4) == round(mid / 4) * 4
    caps = [length_cap(sched, s, 4) for s in range(120)]
    assert caps == sorted(caps) and all(c % 4 == 0 for c in caps)
    lin = LengthSchedule(start=100, end=2000, ramp_steps=100, shape="linear")
    assert length_cap(lin, 50, 4) == 1048  # round(1050 / 4) * 4
    assert length_cap(LengthSchedule(start=1, end=2, ramp_steps=5), 0, 4) == 4  # never below one block
    assert ramp_fraction(3, 0, "cos") == 1.0
    assert domain_cap(4000, "math", {"math": 2048}) == 2048 and domain_cap(4000, "chat", {"math": 2048}) == 4000


def test_stage_lookup():
    stages = [CurriculumStage(name="a", rollout_steps=2), CurriculumStage(name="b", rollout_steps=3)]
    assert [(p.index, p.step_in_stage) for p in map(lambda s: stage_at(stages, s), range(5))] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    with pytest.raises(ValueError):
        stage_at(stages, 5)


def test_stage_ends_and_last_completed_stage():
    stages = [CurriculumStage(name="a", rollout_steps=3), CurriculumStage(name="b", rollout_steps=2)]
    assert [stage_end_step(stages, n) for n in ("a", "b", None)] == [3, 5, 5]
    assert [last_completed_stage(stages, k) for k in (0, 2, 3, 4, 5)] == [None, None, "a", "a", "b"]
    with pytest.raises(ConfigError, match="'c' is not a curriculum stage; valid stages: a, b"):
        stage_end_step(stages, "c")


def test_learning_rate_warmup_and_cosine():
    lrs = [learning_rate(s, 20, 5, 1e-5, 1e-6) for s in range(20)]
    assert lrs[0] == pytest.approx(2e-6) and lrs[4] == pytest.approx(1e-5)
    assert lrs[19] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_loss_mask_excludes_padding_after_eos_and_optionally_eos():
    eos = 1
    resp = torch.tensor([[5, 6, eos, 7, 0], [5, 6, 7, 8, 9], [eos, 0, 0, 0, 0], [5, 6, 0, 0, 0]])
    lengths = torch.tensor([4, 5, 1, 2])
    excl = response_loss_mask(resp, lengths, [eos], exclude_eos=True)
    incl = response_loss_mask(resp, lengths, [eos], exclude_eos=False)
    assert excl.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert incl.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]


def _random_step_map(n, length, block_size, seed):
    """Step maps shaped like the sampler's: rounds increase block by block, -1 past each length."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, length + 1, (n,), generator=g)
    steps = torch.full((n, length), -1, dtype=torch.long)
    for i in range(n):
        step = 0
        for b0 in range(0, int(lengths[i]), block_size):
            span = range(b0, min(b0 + block_size, int(lengths[i])))
            rounds = torch.randint(0, block_size, (len(span),), generator=g)
            for j, r in zip(span, rounds.tolist()):
                steps[i, j] = step + r
            step += block_size
    return steps, lengths


@pytest.mark.parametrize("seed", range(5))
def test_one_state_per_block_agrees_with_step_map_and_is_never_terminal(seed):
    block_size = 4
    steps, lengths = _random_step_map(6, 14, block_size, seed)
    masked = select_one_per_block(steps, lengths, block_size, torch.Generator().manual_seed(seed))
    for i in range(6):
        for b0 in range(0, 14, block_size):
            blk = slice(b0, b0 + block_size)
            real = steps[i, blk] >= 0
            m = masked[i, blk]
            assert not (m & ~real).any()  # padding never masked
            if not real.any():
                continue
            assert m.any()  # never terminal
            chosen = int(steps[i, blk][m].min())  # the chosen round is a real committing round
            expected = real & (steps[i, blk] >= chosen)  # everything committed at or after it is masked
            assert torch.equal(m, expected)


def test_one_state_per_block_is_uniform_over_rounds():
    steps = torch.tensor([[0, 1, 1, 2]])
    counts = {}
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        key = tuple(select_one_per_block(steps, torch.tensor([4]), 4, g)[0].tolist())
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(True, True, True, True), (False, True, True, True), (False, False, False, True)}
    assert all(900 < c < 1100 for c in counts.values())


def test_all_rounds_enumerates_every_round_of_every_block():
    steps = torch.tensor([[0, 1, 1, 2, 3, 3, 3, -1], [0, 0, 0, 0, -1, -1, -1, -1]])
    masked, source = select_all_rounds(steps, torch.tensor([7, 4]), 4)
    assert source.tolist() == [0, 0, 0, 1]
    assert masked.int().tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
    ]


def test_mdm_random_mask_masks_at_least_one_real_token_per_block():
    lengths = torch.tensor([0, 3, 9, 12])
    for seed in range(10):
        m = random_block_mask(lengths, 12, 4, 0.0, torch.Generator().manual_seed(seed))
        for i, n in enumerate(lengths.tolist()):
            assert not m[i, n:].any()
            for b0 in range(0, n, 4):
                assert m[i, b0 : min(b0 + 4, n)].any()
