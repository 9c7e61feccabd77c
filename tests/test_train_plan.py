"""The per-step plan is a pure function of the config and the step, and the counters change in one place."""

from __future__ import annotations

import dataclasses

import pytest

from opdlm.config.train import TrainConfig
from opdlm.train.curriculum import length_cap, stage_at
from opdlm.train.data import stream_indices
from opdlm.train.plan import ORDER, ROLLOUT, SELECTION, plan_step, step_seed
from opdlm.train.schedule import learning_rate


def _cfg(**kw) -> TrainConfig:
    stages = [
        {"name": "short", "rollout_steps": 3, "length": {"start": 8, "end": 16, "ramp_steps": 2}, "lr": 1e-3},
        {"name": "wide", "rollout_steps": 2, "length": {"start": 32, "end": 32}, "block_size": 8, "threshold": 0.8},
    ]
    base = dict(
        stages=stages, prompts_per_rollout=6, optimizer_steps_per_rollout=3, checkpoint_every=2, lr=5e-4, min_lr=1e-5
    )
    return TrainConfig(**{**base, **kw})


def test_plan_is_what_the_curriculum_schedule_and_data_stream_say():
    cfg = _cfg()
    for step in range(cfg.total_rollout_steps):
        plan = plan_step(cfg, step, num_rows=10, seed=7)
        pos = stage_at(cfg.stages, step)
        block_size = cfg.stage_block_size(pos.stage)
        assert plan.position == pos and plan.block_size == block_size
        assert plan.length_cap == length_cap(pos.stage.length, pos.step_in_stage, block_size)
        assert plan.sampler.block_size == block_size
        assert plan.sampler.threshold == (pos.stage.threshold or cfg.rollout.threshold)
        assert plan.prompt_indices == tuple(stream_indices(10, step * 6, 6, 7))
        peak = pos.stage.lr or cfg.lr
        total, warm = cfg.total_rollout_steps * 3, cfg.warmup_rollout_steps * 3
        assert plan.lrs == tuple(learning_rate(step * 3 + k, total, warm, peak, cfg.min_lr) for k in range(3))
    assert [plan_step(cfg, s, 10, 7).block_size for s in range(5)] == [4, 4, 4, 8, 8]
    # every checkpoint_every steps and at each stage end (steps 2 and 4 end a stage)
    assert [plan_step(cfg, s, 10, 7).checkpoint_after for s in range(5)] == [False, True, True, True, True]
    assert plan_step(_cfg(checkpoint_every=50), 0, 10, 7).checkpoint_after is False
    assert plan_step(_cfg(objective="mdm_sft"), 0, 10, 7).sampler is None  # ground truth: no rollout sampler


def test_plan_is_pure_and_frozen():
    cfg = _cfg()
    assert plan_step(cfg, 3, 10, 7) == plan_step(cfg, 3, 10, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan_step(cfg, 3, 10, 7).block_size = 2


def test_ranks_split_the_prompts_and_draw_their_own_random_streams():
    cfg = _cfg()
    plans = [plan_step(cfg, 1, 10, 7, rank=r, world_size=3) for r in range(3)]
    shares = [i for p in plans for i in p.prompt_indices]
    assert sorted(shares) == sorted(stream_indices(10, 6, 6, 7))
    seeds = {s for p in plans for s in (p.rollout_seed, p.selection_seed, p.order_seed)}
    assert len(seeds) == 9
    assert plans[0].rollout_seed == step_seed(7, 1, ROLLOUT, 0)
    assert (plans[2].selection_seed, plans[2].order_seed) == (step_seed(7, 1, SELECTION, 2), step_seed(7, 1, ORDER, 2))


def test_counters_advance_in_one_place_from_a_step_outcome():
    import torch

    from opdlm.train.loop import StepOutcome, advance, step_metrics
    from opdlm.train.optimise import OptimiseResult
    from opdlm.train.setup import Counters

    plan = plan_step(_cfg(), 3, 10, 7)
    optimised = OptimiseResult(8, (1.0, 3.0), 2e-4, (0.5,), torch.ones(8), torch.full((8,), 2.0), 60.0, 30.0, 0)
    outcome = StepOutcome(plan, optimised, 40, 6, 3, 1, 2, 1.5, 10.0, 30.0, 60.0)
    assert outcome.flops == 100.0
    before = Counters(3, 9, 100, 100, 1000.0, 4, 5, 100.0, 300.0, 600.0)
    after = advance(before, outcome)
    assert after == Counters(4, 11, 140, 140, 1100.0, 5, 7, 110.0, 330.0, 660.0)
    assert before == Counters(
        3, 9, 100, 100, 1000.0, 4, 5, 100.0, 300.0, 600.0
    )  # a new value; the old one is unchanged
    metrics = step_metrics(outcome, after)
    assert not any(k.startswith("_") for k in metrics)
    assert metrics["flops"] == 100.0 and metrics["cumulative_flops"] == metrics["flops_total"] == 1100.0
    assert (metrics["flops_rollout"], metrics["flops_teacher"], metrics["flops_student"]) == (110.0, 330.0, 660.0)
    assert "future_aware_weight" not in metrics  # a causal run's plan has no target weight
    assert metrics["block_size"] == 8 and metrics["optimizer_step"] == 11 and metrics["loss_tokens"] == 16
    assert metrics["cumulative_train_tokens"] == 140 and metrics["grad_norm"] == 2.0
    assert metrics["kl_by_block_position/7"] == 0.5


def test_plan_carries_the_future_aware_weight_of_its_step():
    import torch

    from opdlm.train.future_aware import ramp_weight
    from opdlm.train.loop import StepOutcome, step_metrics
    from opdlm.train.optimise import OptimiseResult
    from opdlm.train.setup import Counters

    cfg = _cfg(target="future_aware", future_aware={"weight": 0.8, "ramp_steps": 4, "ramp_shape": "cos"})
    weights = [plan_step(cfg, s, 10, 7).target_weight for s in range(5)]
    assert weights == [ramp_weight(s, 0.8, 4, "cos") for s in range(5)]
    assert weights[0] == 0.0 and weights[4] == 0.8
    assert plan_step(_cfg(), 2, 10, 7).target_weight is None
    optimised = OptimiseResult(8, (1.0,), 2e-4, (0.5,), torch.ones(8), torch.full((8,), 2.0), 6.0, 3.0, 7)
    outcome = StepOutcome(plan_step(cfg, 2, 10, 7), optimised, 40, 6, 3, 1, 2, 1.5, 1.0, 3.0, 6.0)
    metrics = step_metrics(outcome, Counters())
    assert metrics["future_aware_weight"] == weights[2] and metrics["future_aware_corrected"] == 7
