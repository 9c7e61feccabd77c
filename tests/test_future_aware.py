"""The future-aware target (opdlm.train.future_aware) against brute force, and ``train.target`` end to end.

The pure functions are checked with a table-based toy teacher over a vocabulary of 5: every prefix
gets its own random next-token distribution, so the brute-force references below (the definition
written as loops, and the exact posterior of the teacher's joint over a block by enumeration) share
no code with the batched implementation.
"""

from __future__ import annotations

import itertools
import json
from functools import cache
from pathlib import Path

import pytest
import torch

from opdlm.config.recipe import load_recipe
from opdlm.errors import ConfigError
from opdlm.train.future_aware import (
    branch_layout,
    build_branches,
    corrected_target_logprobs,
    plan_pieces,
    ramp_weight,
    scored_future,
    teacher_branch_logprobs,
)

V = 5
PROMPT = (1, 3)


@cache
def toy_logprobs(prefix: tuple[int, ...]) -> torch.Tensor:
    """The toy teacher's ``log p(. | prefix)`` (V,), a fixed random distribution per prefix."""
    g = torch.Generator().manual_seed(hash(prefix) % (2**31))
    return torch.log_softmax(2.0 * torch.randn(V, generator=g, dtype=torch.float64), -1)


def causal_table(response_BL: torch.Tensor) -> torch.Tensor:
    rows = []
    for resp in response_BL.tolist():
        rows.append(torch.stack([toy_logprobs(PROMPT + tuple(resp[:j])) for j in range(len(resp))]))
    return torch.stack(rows)


def toy_scorer(response_BL: torch.Tensor):
    """The toy teacher on the branch batch: ``log p(targets[j, t] | x_<i, branch j up to t)``."""

    def score(br):
        out = torch.zeros(br.tokens_JW.shape, dtype=torch.float64)
        for j in range(len(br)):
            row, i = int(br.row_J[j]), int(br.start_J[j])
            prefix = PROMPT + tuple(response_BL[row, :i].tolist())
            for t in range(int(br.length_J[j])):
                branch = tuple(br.tokens_JW[j, : t + 1].tolist())
                out[j, t] = toy_logprobs(prefix + branch)[int(br.targets_JW[j, t])]
        return out

    return score


def brute_force(response_BL, masked_BL, lengths_B, block_size, top_k, weight, scope, tail):
    """The module docstring's definition, one position and one candidate at a time."""
    causal = causal_table(response_BL)
    out = causal.clone()
    for b, resp in enumerate(response_BL.tolist()):
        n = int(lengths_B[b])
        for i in range(n):
            if not masked_BL[b, i]:
                continue
            end = min((i // block_size + 1) * block_size, n)
            future = [j for j in range(i + 1, end) if scope == "final" or not masked_BL[b, j]]
            if not future:
                continue
            p = causal[b, i]
            cands = torch.topk(p, min(top_k, V)).indices.tolist()
            logits = []
            for c in cands:
                seq = resp[:i] + [c] + resp[i + 1 :]
                s = sum(float(toy_logprobs(PROMPT + tuple(seq[:j]))[seq[j]]) for j in future)
                logits.append(float(p[c]) + weight * s)
            post = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
            alpha = float(p[cands].exp().sum()) if tail == "keep" else 1.0
            if tail == "drop":
                out[b, i] = float("-inf")
            for c, q in zip(cands, post.tolist()):
                out[b, i, c] = torch.tensor(alpha * q, dtype=torch.float64).log()
    return out


def make_case(seed: int, n_rows: int = 3, length: int = 7):
    g = torch.Generator().manual_seed(seed)
    response = torch.randint(0, V, (n_rows, length), generator=g)
    masked = torch.rand((n_rows, length), generator=g) < 0.6
    lengths = torch.tensor([length, length - 2, length - 1])[:n_rows]
    return response, masked, lengths


def ours(response, masked, lengths, block_size, top_k, weight, scope, tail):
    return corrected_target_logprobs(
        causal_table(response), response, masked, lengths, block_size, top_k, weight, scope, tail, toy_scorer(response)
    )


@pytest.mark.parametrize("scope", ["visible", "final"])
@pytest.mark.parametrize("tail", ["keep", "drop"])
@pytest.mark.parametrize(("top_k", "weight"), [(2, 1.0), (3, 0.5), (5, 1.0)])
def test_batched_target_matches_brute_force(scope, tail, top_k, weight):
    for seed in range(3):
        response, masked, lengths = make_case(seed)
        expected = brute_force(response, masked, lengths, 4, top_k, weight, scope, tail)
        got = ours(response, masked, lengths, 4, top_k, weight, scope, tail)
        assert torch.allclose(got.exp(), expected.exp(), atol=1e-6, rtol=0)
        real = torch.arange(response.shape[1])[None, :] < lengths[:, None]
        assert torch.allclose(got.exp().sum(-1)[real], torch.ones(int(real.sum()), dtype=got.dtype), atol=1e-9)


def test_k_equal_v_is_the_exact_posterior_of_the_teachers_block_joint():
    """k = V, lambda = 1, scope final: p_T(x_i | x_<i, x_{i+1..e-1}) from the joint over the whole block."""
    B = 4
    response, _, _ = make_case(7, n_rows=2, length=8)
    lengths = torch.tensor([8, 8])
    masked = torch.ones_like(response, dtype=torch.bool)
    got = ours(response, masked, lengths, B, V, 1.0, "final", "keep")
    for b, resp in enumerate(response.tolist()):
        for s in range(0, 8, B):
            joint = {}  # log p_T(x_s..x_{s+B-1} | x_<s) of every completion of the block
            for block in itertools.product(range(V), repeat=B):
                seq = resp[:s] + list(block)
                joint[block] = sum(float(toy_logprobs(PROMPT + tuple(seq[:j]))[seq[j]]) for j in range(s, s + B))
            for i in range(s, s + B):
                others = [resp[j] for j in range(s, s + B)]
                logj = []
                for c in range(V):
                    others[i - s] = c
                    logj.append(joint[tuple(others)])
                posterior = torch.softmax(torch.tensor(logj, dtype=torch.float64), 0)
                assert torch.allclose(got[b, i].exp(), posterior, atol=1e-9), (b, i)


def test_no_in_block_future_is_exactly_the_causal_target():
    B = 4
    response, _, _ = make_case(3, n_rows=2, length=8)
    lengths = torch.tensor([8, 6])
    causal = causal_table(response)
    # every position masked: scope final corrects all but each block's last (and the last real) position
    masked = torch.ones_like(response, dtype=torch.bool)
    got = ours(response, masked, lengths, B, 3, 1.0, "final", "drop")
    for b, n in enumerate(lengths.tolist()):
        for i in range(8):
            last = i % B == B - 1 or i == n - 1 or i >= n
            assert torch.equal(got[b, i], causal[b, i]) == last, (b, i)
    # scope visible with nothing visible after the position: the causal target, bit for bit
    got = ours(response, masked, lengths, B, 3, 1.0, "visible", "drop")
    assert torch.equal(got, causal)
    # unmasked positions are never touched
    masked = torch.zeros_like(masked)
    masked[:, 0] = True  # the rest of block 0 visible
    got = ours(response, masked, lengths, B, 3, 1.0, "visible", "keep")
    assert torch.equal(got[:, 1:], causal[:, 1:]) and not torch.equal(got[:, 0], causal[:, 0])


def test_weight_zero_is_the_causal_target():
    response, masked, lengths = make_case(5)
    causal = causal_table(response)
    for scope, tail in itertools.product(["visible", "final"], ["keep", "drop"]):
        assert torch.equal(ours(response, masked, lengths, 4, 3, 0.0, scope, tail), causal)


def test_keep_tail_preserves_the_causal_mass_outside_and_inside_the_candidates():
    response, masked, lengths = make_case(11)
    causal = causal_table(response)
    got = ours(response, masked, lengths, 4, 2, 1.0, "final", "keep")
    top2 = torch.topk(causal, 2, dim=-1).indices
    inside = lambda t: t.exp().gather(-1, top2).sum(-1)  # noqa: E731
    assert torch.allclose(inside(got), inside(causal), atol=1e-12)
    tail = torch.ones_like(causal, dtype=torch.bool).scatter(-1, top2, False)
    assert torch.equal(got[tail], causal[tail])


def test_scored_future_visible_and_final():
    masked = torch.tensor([[True, True, False, True, False, True, False]])
    lengths = torch.tensor([6])
    final = scored_future(masked, lengths, 4, "final")
    visible = scored_future(masked, lengths, 4, "visible")
    assert final.shape == (1, 7, 3)
    assert final[0, 0].tolist() == [True, True, True] and final[0, 3].tolist() == [False, False, False]
    assert final[0, 4].tolist() == [True, False, False]  # position 6 is past the length
    assert visible[0, 0].tolist() == [False, True, False] and visible[0, 1].tolist() == [True, False, False]
    assert visible[0, 4].tolist() == [False, False, False]  # 5 is masked, 6 past the end
    assert scored_future(masked, lengths, 1, "final").shape == (1, 7, 0)
    with pytest.raises(ValueError, match="scope"):
        scored_future(masked, lengths, 4, "all")


def test_ramp_weight():
    assert ramp_weight(3, 0.7, 0) == 0.7
    assert ramp_weight(0, 0.8, 100) == 0.0
    assert ramp_weight(25, 0.8, 100) == pytest.approx(0.2)
    assert ramp_weight(50, 1.0, 100, "cos") == pytest.approx(0.5)
    assert ramp_weight(500, 0.8, 100, "cos") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="ramp shape"):
        ramp_weight(1, 1.0, 10, "exp")


# --- the real teacher forward -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    import transformers

    from opdlm.testing.tiny import tiny_config

    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(tiny_config("qwen3", vocab_size=24)).eval()


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("max_branch_tokens", [4096, 5])
def test_teacher_branch_forward_matches_causal_forwards_of_substituted_rows(tiny_lm, backend, max_branch_tokens):
    """Each branch token's score equals a plain causal forward over the row with the candidate substituted."""
    tiny_lm.set_attn_implementation(backend)
    g = torch.Generator().manual_seed(1)
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10]]
    P = 5
    prompt_ids = torch.tensor([[0, 0] + prompts[0], prompts[1]])
    prompt_lens = torch.tensor([3, 5])
    response = torch.randint(1, 24, (2, 8), generator=g)
    lengths = torch.tensor([8, 7])
    masked = torch.rand((2, 8), generator=g) < 0.7
    real = torch.arange(8)[None, :] < lengths[:, None]
    row_N, col_N = (masked & real).nonzero(as_tuple=True)
    cand_NK = torch.randint(1, 24, (len(row_N), 3), generator=g)
    scored = scored_future(masked, lengths, 4, "final")[row_N, col_N]
    branches = build_branches(response, row_N, col_N, cand_NK, scored)
    assert len(branches) > 0
    got, work = teacher_branch_logprobs(
        tiny_lm, prompt_ids, prompt_lens, response, branches, backend, max_branch_tokens
    )
    assert work.forwards == len(plan_pieces(branches, 2, max_branch_tokens))
    assert work.head_tokens == int(branches.weight_JW.sum())
    for j in range(len(branches)):
        b, i = int(branches.row_J[j]), int(branches.start_J[j])
        seq = prompts[b] + response[b, :i].tolist() + branches.tokens_JW[j, : int(branches.length_J[j])].tolist()
        with torch.no_grad():
            lp = torch.log_softmax(tiny_lm(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        for t in range(int(branches.length_J[j])):
            target = int(branches.targets_JW[j, t])
            want = float(lp[len(prompts[b]) + i + t, target]) if branches.weight_JW[j, t] else 0.0
            assert got[j, t].item() == pytest.approx(want, abs=1e-5), (j, t)
    assert P == prompt_ids.shape[1]
    tiny_lm.set_attn_implementation("sdpa")


def test_branch_layout_attended_pairs_count_by_hand():
    """One row, prompt 2, one job at i = 1 with a 2-token branch: clean part is prompt + x_0."""
    response = torch.tensor([[5, 6, 7, 8]])
    scored = torch.tensor([[True, True, False]])
    br = build_branches(response, torch.tensor([0]), torch.tensor([1]), torch.tensor([[9]]), scored)
    layout = branch_layout(torch.tensor([[1, 2]]), torch.tensor([2]), response, br, [(0, torch.tensor([0]))])
    assert layout.ids_BT.tolist() == [[1, 2, 5, 9, 7]]
    assert layout.position_ids_BT.tolist() == [[0, 1, 2, 3, 4]]
    # clean: causal over 3 tokens = 6 pairs; branch token 0 sees 3 clean + itself, token 1 sees 3 + 2
    assert layout.attended_pairs == 6 + 4 + 5 and layout.real_tokens == 5


# --- train.target end to end ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
ONE_STAGE = [
    "train.prompts_per_rollout=4",
    "train.optimizer_steps_per_rollout=2",
    "train.micro_batch_size=2",
    "train.num_prompts=64",
    "train.checkpoint_every=1",
    "train.deterministic=true",
    "train.stages=[{name: short, rollout_steps: 2, length: {start: 8, end: 12, ramp_steps: 1}}]",
]


def test_config_validates_the_target_settings():
    tiny = REPO / "configs" / "tiny.yaml"
    recipe = load_recipe(tiny, ["train.target=future_aware", "train.future_aware.top_k=4"])
    assert recipe.train.target == "future_aware" and recipe.train.future_aware.top_k == 4
    assert load_recipe(tiny).train.target == "causal"
    with pytest.raises(ConfigError, match="needs objective: opd"):
        load_recipe(tiny, ["train.target=future_aware", "train.objective=mdm_sft"])
    with pytest.raises(ConfigError, match="weight"):
        load_recipe(tiny, ["train.future_aware.weight=1.5"])
    with pytest.raises(ConfigError, match="scope"):
        load_recipe(tiny, ["train.future_aware.scope=everything"])


def test_future_aware_training_runs_and_counts_its_teacher_flops(tiny_teacher_dir, tmp_path):
    import time

    from opdlm.train.loop import SUMMARY_FILE, train

    tiny = REPO / "configs" / "tiny.yaml"
    runs = {}
    for target in ("causal", "future_aware"):
        out = tmp_path / target
        t0 = time.perf_counter()
        train(
            load_recipe(tiny, [*ONE_STAGE, f"train.target={target}"]), out, teacher=str(tiny_teacher_dir), console=False
        )
        seconds = time.perf_counter() - t0
        lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        runs[target] = (json.loads((out / SUMMARY_FILE).read_text()), lines, seconds)
    for summary, lines, _ in runs.values():
        flops = summary["flops"]
        assert set(flops) == {"rollout", "teacher", "student", "total"}
        assert flops["total"] == pytest.approx(flops["rollout"] + flops["teacher"] + flops["student"])
        assert min(flops.values()) > 0
        last = lines[-1]
        assert last["flops_total"] == pytest.approx(flops["total"]) and last["flops_teacher"] == flops["teacher"]
        assert [m["flops_total"] for m in lines] == sorted(m["flops_total"] for m in lines)
        assert all(m["loss"] == m["loss"] for m in lines)  # finite, not nan
    causal, fa = runs["causal"][0]["flops"], runs["future_aware"][0]["flops"]
    # same seed, same first rollouts: the step-0 rollout and student work agree; the teacher pays for rescoring
    first_c, first_f = runs["causal"][1][0], runs["future_aware"][1][0]
    assert first_c["flops_rollout"] == first_f["flops_rollout"] and first_c["flops_student"] == first_f["flops_student"]
    assert first_f["flops_teacher"] > first_c["flops_teacher"]
    print(
        f"\ncausal: {runs['causal'][2]:.2f}s, future_aware: {runs['future_aware'][2]:.2f}s for 2 steps; "
        f"teacher FLOPs x{fa['teacher'] / causal['teacher']:.2f}, total x{fa['total'] / causal['total']:.2f}"
    )


def test_chunked_kl_applies_the_edit_like_the_dense_target():
    from opdlm.train.future_aware import TargetEdit, apply_edit, correct_candidates
    from opdlm.train.kl import forward_kl_chunked, forward_kl_from_logprobs

    g = torch.Generator().manual_seed(0)
    N, H, Vb, K = 7, 6, 11, 3
    t_head, s_head = torch.nn.Linear(H, Vb, bias=False), torch.nn.Linear(H, Vb, bias=False)
    t_hidden, s_hidden = torch.randn(N, H, generator=g), torch.randn(N, H, generator=g)
    causal = torch.log_softmax(t_head(t_hidden).detach(), -1)
    cand, idx = torch.topk(causal, K, -1)
    for tail in ("keep", "drop"):
        edit = TargetEdit(
            idx, correct_candidates(cand, torch.randn(N, K, generator=g), 1.0, tail), torch.rand(N) < 0.6, tail
        )
        want = forward_kl_from_logprobs(
            apply_edit(causal, idx, edit.corrected_NK, edit.edit_N, tail), torch.log_softmax(s_head(s_hidden), -1)
        )
        got = forward_kl_chunked(t_hidden, s_hidden, t_head, s_head, chunk_size=2, min_chunks=5, teacher_edit=edit)
        assert torch.allclose(got, want, atol=1e-6)
    unedited = TargetEdit(idx, cand, torch.zeros(N, dtype=torch.bool), "keep")
    plain = forward_kl_chunked(t_hidden, s_hidden, t_head, s_head, chunk_size=2)
    assert torch.equal(
        forward_kl_chunked(t_hidden, s_hidden, t_head, s_head, chunk_size=2, teacher_edit=unedited), plain
    )


def test_loss_targets_dispatch(tiny_lm):
    from opdlm.config.train import TrainConfig
    from opdlm.train.batch import make_rows
    from opdlm.train.targets import loss_targets, teacher_hidden_states

    g = torch.Generator().manual_seed(2)
    responses = [torch.randint(1, 24, (7,), generator=g).tolist(), torch.randint(1, 24, (5,), generator=g).tolist()]
    masked = torch.rand((2, 8), generator=g) < 0.7
    rows = make_rows([[3, 4], [5, 6, 7]], responses, torch.arange(2), masked, masked, 0, 4).select(torch.arange(2), 4)
    row_N, col_N = rows.loss_BL.nonzero(as_tuple=True)
    causal_hidden = teacher_hidden_states(tiny_lm, rows.prompt_ids_BP, rows.prompt_lens_B, rows.response_BL, "sdpa")
    causal = loss_targets(tiny_lm, rows, row_N, col_N, "sdpa", TrainConfig(), 0, 4)
    assert causal.edit is None and torch.equal(causal.hidden_NH, causal_hidden[row_N, col_N])
    ramped = TrainConfig(target="future_aware", future_aware={"ramp_steps": 10})
    assert loss_targets(tiny_lm, rows, row_N, col_N, "sdpa", ramped, 0, 4).edit is None  # lambda(0) = 0
    fa = loss_targets(tiny_lm, rows, row_N, col_N, "sdpa", ramped, 5, 4)
    assert torch.equal(fa.hidden_NH, causal.hidden_NH) and fa.edit is not None
    assert fa.branch_work.forwards == 1 and fa.candidate_head_tokens == len(row_N)
    assert bool(fa.edit.edit_N.any())
