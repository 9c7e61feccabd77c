"""The ``train`` section of a recipe: objective, rollouts, optimiser, KL, curriculum (METHOD §4-5).

Every paper value is a default here or a field in a shipped recipe, never a constant in code.
Validation messages name the field and the numbers involved, so a bad recipe fails with one line a
person understands.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from opdlm.config.base import TRAINING_SEED_MAX, StrictModel, check_json_object_file
from opdlm.config.sampler import SamplerConfig


def paper_rollout_sampler() -> SamplerConfig:
    """The paper's rollout sampler: B=4, 4 steps per block, temperature 1.0, dynamic threshold 0.9."""
    return SamplerConfig(
        block_size=4,
        denoise_steps_per_block=4,
        remasking="dynamic",
        threshold=0.9,
        temperature=1.0,
        max_new_tokens=4000,
    )


class LengthSchedule(StrictModel):
    """The rollout-length cap of a stage: rises from ``start`` to ``end`` over ``ramp_steps`` (METHOD §5)."""

    start: int = Field(100, ge=1, description="Cap (tokens) at the stage's first rollout step.")
    end: int = Field(4000, ge=1, description="Cap reached after `ramp_steps` rollout steps.")
    ramp_steps: int = Field(100, ge=0, description="Rollout steps of the ramp; 0 jumps straight to `end`.")
    shape: Literal["cos", "linear"] = Field(
        "cos", description="cos: frac = 1 - cos(pi/2 * t); linear: frac = t, with t = min(step / ramp_steps, 1)."
    )


class CurriculumStage(StrictModel):
    """One stage of the curriculum: how many rollout steps, at which lengths, with which overrides."""

    name: str = Field(..., min_length=1, description="Stage name (shown in logs and metrics).")
    rollout_steps: int = Field(..., ge=1, description="Rollout steps (rollout batches) in this stage.")
    length: LengthSchedule = Field(default_factory=LengthSchedule, description="Rollout length cap schedule.")
    domain_caps: dict[str, int] = Field(
        default_factory=dict,
        description="Per-domain cap on top of the schedule, e.g. {math: 4096, code: 2048} (paper values).",
    )
    block_size: int | None = Field(
        None,
        ge=1,
        description="Block size of this stage's rollouts and training states (default: convert.block_size, "
        "which train.rollout follows); the last stage's is the trained student's.",
    )
    threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Dynamic-remasking threshold for this stage's rollouts."
    )
    lr: float | None = Field(None, gt=0.0, description="Peak learning rate for this stage (default: train.lr).")

    @model_validator(mode="after")
    def _caps_positive(self) -> CurriculumStage:
        bad = {k: v for k, v in self.domain_caps.items() if v < 1}
        if bad:
            domain, cap = next(iter(bad.items()))
            raise ValueError(f"stage {self.name!r}: domain_caps[{domain!r}] ({cap}) must be >= 1")
        return self


class FutureAwareConfig(StrictModel):
    """Settings of ``train.target: future_aware`` (:mod:`opdlm.train.future_aware` defines the target)."""

    top_k: int = Field(
        16, ge=1, description="Candidates per masked position: the teacher's top-k under the causal target."
    )
    scope: Literal["visible", "final"] = Field(
        "visible",
        description="Which later in-block tokens are scored: visible = unmasked in the training state (what the "
        "student sees); final = every finished token after the position (both reference implementations).",
    )
    tail: Literal["keep", "drop"] = Field(
        "keep",
        description="Tokens outside the top-k: keep their causal probability (the candidates share their own "
        "causal mass); drop = the target is the posterior over the candidates alone.",
    )
    weight: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="lambda of the tempered posterior p(c) * L(c)^lambda: 0 = causal target, 1 = full correction.",
    )
    ramp_steps: int = Field(
        0, ge=0, description="Rollout steps over which lambda rises from 0 to `weight`; 0 = constant."
    )
    ramp_shape: Literal["linear", "cos"] = Field("linear", description="Shape of the lambda ramp.")
    max_branch_tokens: int = Field(
        4096, ge=1, description="Candidate-branch tokens per teacher rescoring forward (bounds its memory)."
    )


class TrainConfig(StrictModel):
    """On-policy distillation (or the masked-diffusion SFT baseline) of a converted student."""

    objective: Literal["opd", "mdm_sft"] = Field(
        "opd",
        description="opd: forward KL to the teacher on the student's own rollouts; "
        "mdm_sft: masked-diffusion cross-entropy on the dataset's ground-truth responses.",
    )
    rollout: SamplerConfig = Field(
        default_factory=paper_rollout_sampler,
        description="Rollout sampler; block_size follows convert.block_size, and each stage's block size, "
        "threshold and length cap replace its own (TrainConfig.stage_sampler).",
    )
    prompts_per_rollout: int = Field(128, ge=1, description="Prompts per rollout batch (one rollout each).")
    optimizer_steps_per_rollout: int = Field(16, ge=1, description="Optimizer steps that consume one rollout batch.")
    micro_batch_size: int = Field(8, ge=1, description="Rows per forward/backward (gradient accumulation unit).")
    max_prompt_tokens: int = Field(1024, ge=1, description="Longer prompts are skipped (and counted), never truncated.")
    math_suffix: bool = Field(True, description="Append the paper's math instruction to math prompts (METHOD §6).")

    lr: float = Field(1e-5, gt=0.0, description="Peak AdamW learning rate.")
    min_lr: float = Field(1e-6, ge=0.0, description="Learning rate at the end of the cosine decay.")
    warmup_rollout_steps: int = Field(5, ge=0, description="Linear warmup, in rollout steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    adam_betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.9, 0.999), description="AdamW betas, each in [0, 1)."
    )
    grad_clip: float = Field(1.0, ge=0.0, description="Max global gradient norm; 0 disables clipping.")

    state_selection: Literal["one_per_block", "all_rounds"] = Field(
        "one_per_block",
        description="one_per_block: one random denoising round per block, one row per rollout; "
        "all_rounds: one row per round index, every round of every block becomes a state.",
    )
    kl: Literal["full", "top_k"] = Field(
        "full", description="Full-vocabulary forward KL, or the teacher's top-k slice."
    )
    kl_top_k: int = Field(16, ge=1, description="k of the top-k KL (paper: 16 at 4B/8B).")
    target: Literal["causal", "future_aware"] = Field(
        "causal",
        description="Teacher target at a masked position: causal = p_T(x_i | x_<i) (the paper); future_aware = "
        "its top-k candidates re-weighted by how well the teacher explains the rest of the block given each.",
    )
    future_aware: FutureAwareConfig = Field(
        default_factory=FutureAwareConfig, description="Settings of target: future_aware."
    )
    kl_chunk_size: int = Field(1024, ge=1, description="Loss positions per chunk of the vocabulary-sized KL.")
    exclude_eos_from_loss: bool = Field(
        True,
        description=(
            "Leave the EOS position out of the loss (paper, for OPD). Set false for mdm_sft: a masked-diffusion "
            "student learns to stop only from EOS targets."
        ),
    )
    mdm_min_mask_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="mdm_sft: per-block mask ratio t ~ U(min, 1); at least one token is masked."
    )

    device: str = Field("auto", description="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ...")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on cuda, fp32 on cpu. Master weights stay fp32."
    )
    attn_backend: Literal["sdpa", "eager", "flex_attention"] | None = Field(
        None,
        description="Attention backend of the student, and of the teacher unless teacher_attn_backend says "
        "otherwise (default: flex on cuda, sdpa on cpu).",
    )
    teacher_attn_backend: Literal["auto", "sdpa", "eager", "flex_attention", "flash_attention_2"] = Field(
        "auto",
        description="The frozen teacher's causal forward. auto: flash_attention_2 on cuda with a bf16 teacher "
        "when flash-attn (the gpu extra) is installed, else attn_backend. An explicit flash_attention_2 that cannot "
        "run (package missing, cpu, fp32) warns and falls back to attn_backend.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="CPU intra-op threads (1 is fastest for tiny models on a busy machine); None = torch default.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (paper: on).")
    deepspeed: str | None = Field(
        None, description="DeepSpeed JSON config (configs/deepspeed/zero2.json, ...); None = plain PyTorch."
    )
    teacher_offload: bool = Field(
        False,
        description="DeepSpeed: run the frozen teacher as a ZeRO-3 inference engine (weights sharded across "
        "ranks and kept in CPU memory, fetched layer by layer); needs `deepspeed`.",
    )
    teacher_deepspeed: str | None = Field(
        None,
        description="DeepSpeed JSON of the teacher's engine when teacher_offload is on (ZeRO stage 3); "
        "None = stage 3 with parameters offloaded to CPU (configs/deepspeed/zero3_teacher_offload.json spells it out).",
    )

    checkpoint_every: int = Field(50, ge=1, description="Write a checkpoint every N rollout steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")
    deterministic: bool = Field(False, description="torch deterministic algorithms (bitwise resume on CPU).")
    seed: int | None = Field(
        None, ge=0, le=TRAINING_SEED_MAX, description="Training seed (default: the recipe's seed)."
    )
    num_prompts: int | None = Field(None, ge=1, description="Prompts drawn from a builtin dataset (None: its default).")

    stages: list[CurriculumStage] = Field(
        default_factory=lambda: [CurriculumStage(name="main", rollout_steps=483)],
        description="Curriculum stages, run in order.",
    )

    @field_validator("deepspeed", "teacher_deepspeed")
    @classmethod
    def _deepspeed_file(cls, value: str | None) -> str | None:
        # read when the recipe loads: a missing or broken file would otherwise stop every rank after conversion
        return None if value is None else check_json_object_file(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be <= lr ({self.lr})")
        if self.optimizer_steps_per_rollout > self.prompts_per_rollout:
            raise ValueError(
                f"optimizer_steps_per_rollout ({self.optimizer_steps_per_rollout}) must be <= "
                f"prompts_per_rollout ({self.prompts_per_rollout}): each optimizer step needs at least one row"
            )
        if not self.stages:
            raise ValueError("stages must list at least one curriculum stage")
        if self.teacher_offload and not self.deepspeed:
            raise ValueError("teacher_offload needs deepspeed (a ZeRO config such as configs/deepspeed/zero3.json)")
        if self.teacher_deepspeed and not self.teacher_offload:
            raise ValueError("teacher_deepspeed is only used with teacher_offload: true")
        if self.target == "future_aware" and self.objective != "opd":
            raise ValueError(
                "target: future_aware corrects the teacher's targets and needs objective: opd (got "
                f"{self.objective!r}, "
                "which has no teacher)"
            )
        if self.target == "future_aware" and self.teacher_offload:
            raise ValueError(
                "target: future_aware is not supported with teacher_offload: its rescoring forwards differ in number "
                "between ranks, which a ZeRO-3 teacher's collective weight gathers cannot allow"
            )
        if self.target == "future_aware":
            for stage in self.stages:
                if self.stage_block_size(stage) < 2:
                    raise ValueError(
                        f"stage {stage.name!r}: target: future_aware needs block_size >= 2 (a block of 1 has no "
                        "in-block future; use target: causal)"
                    )
        if problem := self._no_op_setting():
            raise ValueError(problem)
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; {dupes[0]!r} appears more than once")
        for stage in self.stages:
            block_size = self.stage_block_size(stage)
            if self.rollout.denoise_steps_per_block > block_size:
                raise ValueError(
                    f"stage {stage.name!r}: rollout.denoise_steps_per_block ({self.rollout.denoise_steps_per_block}) "
                    f"must be <= block_size ({block_size})"
                )
        return self

    def _no_op_setting(self) -> str | None:
        """A setting that the rest of the section makes a no-op (None: every setting can take effect).

        A recipe that sets something which cannot take effect would train without a word about it, so it is
        refused. Settings are compared with their defaults: a section written out in full (a recipe dumped and
        read back) names every field, and a default is never a user's request.
        """
        fields = type(self).model_fields
        if self.target == "causal" and self.future_aware != FutureAwareConfig():
            return (
                "future_aware is set but target is 'causal', which never reads it: set "
                "target=future_aware to train with it, or remove future_aware"
            )
        fa = self.future_aware
        if fa.ramp_steps == 0 and fa.ramp_shape != FutureAwareConfig.model_fields["ramp_shape"].default:
            return f"future_aware.ramp_shape ({fa.ramp_shape!r}) has no effect with ramp_steps 0 (no ramp)"
        if self.kl == "full" and self.kl_top_k != fields["kl_top_k"].default:
            return (
                f"kl_top_k ({self.kl_top_k}) is set but kl is 'full', which uses every token: "
                "set kl=top_k to use it, or remove kl_top_k"
            )
        if self.objective == "opd" and self.mdm_min_mask_ratio != fields["mdm_min_mask_ratio"].default:
            return (
                f"mdm_min_mask_ratio ({self.mdm_min_mask_ratio}) only applies to objective mdm_sft; "
                "objective opd trains on its rollouts' own denoising states"
            )
        rollout = self.rollout
        if rollout.remasking == "static":
            staged = [s.name for s in self.stages if s.threshold is not None]
            if staged:
                return (
                    f"stage {staged[0]!r}: threshold is set but rollout.remasking is 'static', which commits a "
                    "fixed number of tokens per step and reads no threshold; use remasking dynamic or remove it"
                )
            if rollout.threshold != SamplerConfig.model_fields["threshold"].default:
                return (
                    f"rollout.threshold ({rollout.threshold}) is set but rollout.remasking is 'static', "
                    "which reads no threshold; use remasking dynamic or remove it"
                )
        if rollout.temperature == 0.0 and (rollout.top_k != 0 or rollout.top_p != 1.0):
            which = f"top_k ({rollout.top_k})" if rollout.top_k != 0 else f"top_p ({rollout.top_p})"
            return (
                f"rollout.{which} is set but rollout.temperature is 0 (greedy), which always takes the "
                "most likely token; raise the temperature or remove it"
            )
        return None

    def stage_block_size(self, stage: CurriculumStage) -> int:
        """Block size in effect during ``stage`` (``rollout.block_size`` is ``convert.block_size`` in a recipe)."""
        return stage.block_size if stage.block_size is not None else self.rollout.block_size

    @property
    def final_block_size(self) -> int:
        """The block size training ends with (the last stage's): the trained student's ``config.json`` value."""
        return self.stage_block_size(self.stages[-1])

    @property
    def total_rollout_steps(self) -> int:
        return sum(s.rollout_steps for s in self.stages)
