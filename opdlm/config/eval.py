"""The evaluation section of a recipe: which benchmarks, how much of them, and the sweep grid."""

from __future__ import annotations

from pydantic import Field, field_validator

from opdlm.config.base import SEED_MAX, StrictModel, check_existing


class EvalConfig(StrictModel):
    """How ``opdlm eval`` and the pipeline's eval stage score a model (METHOD §7)."""

    benchmarks: list[str] = Field(
        default_factory=lambda: ["synthetic"],
        description="Benchmark names (synthetic, gsm8k, math500, aime24, aime25, mmlu, mmlu_pro, gpqa_diamond, "
        "humaneval, mbpp).",
    )
    data_dir: str = Field("data/benchmarks", description="Folder holding the benchmark files in their public formats.")
    limit: int | None = Field(None, ge=1, description="Score only the first N rows of each benchmark; None = all.")
    batch_size: int = Field(16, ge=1, description="Prompts decoded together.")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Generation cap; None = the recipe's sampler.max_new_tokens where a recipe drives the run (the "
        "pipeline, `opdlm eval --config`), else the benchmark's default (e.g. 512 for GSM8K).",
    )
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="Seed for sampling at temperature > 0 and for GPQA's option order."
    )
    device: str = Field("auto", description="auto (cuda when present), cpu or cuda[:N].")
    sweep_thresholds: list[float] = Field(
        default_factory=lambda: [1.0, 0.95, 0.9, 0.85, 0.8],
        description="Dynamic-remasking thresholds of the parallelism sweep (paper: 1.0 to 0.8).",
    )
    sweep_block_sizes: list[int] = Field(
        default_factory=lambda: [4], description="Block sizes of the parallelism sweep (paper: 4, 8, 16)."
    )
    retention: bool = Field(
        True,
        description="Score every completion under the teacher and compare it with the teacher's greedy completion "
        "(teacher NLL ratio, agreement, repetition: opdlm.eval.retention); a causal LM scored alone is its own "
        "teacher. Costs one teacher forward per batch.",
    )
    code_timeout_s: float = Field(10.0, gt=0, description="Wall-clock seconds per code test program.")
    code_memory_mb: int = Field(2048, ge=64, description="Address-space limit per code test process, MiB.")
    code_workers: int | None = Field(None, ge=1, description="Test programs run at once; None = 2 x CPU cores.")
    allow_unsandboxed: bool = Field(
        False, description="Run code tests without bubblewrap when it is missing (unsafe; off by default)."
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks (e.g. gsm8k) scored after the built-in benchmarks, for teacher "
        "and student, with the same sampler settings; needs the lmeval extra. Empty = none.",
    )
    lm_eval_include_path: str | None = Field(
        None, description="Folder of extra lm-eval task YAMLs (lm-eval's --include_path)."
    )

    @field_validator("lm_eval_tasks")
    @classmethod
    def _lm_eval_installed(cls, names: list[str]) -> list[str]:
        import importlib.util

        if names and importlib.util.find_spec("lm_eval") is None:
            raise ValueError("needs lm-eval: pip install 'opdlm[lmeval]' (or leave lm_eval_tasks empty)")
        return names

    @field_validator("lm_eval_include_path")
    @classmethod
    def _include_path_exists(cls, value: str | None) -> str | None:
        return None if value is None else check_existing(value, "directory")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, names: list[str]) -> list[str]:
        from opdlm.config.benchmarks import BENCHMARK_NAMES

        unknown = [n for n in names if n not in BENCHMARK_NAMES]
        if unknown:
            raise ValueError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARK_NAMES)}")
        if not names:
            raise ValueError("list at least one benchmark")
        return names

    @field_validator("sweep_thresholds")
    @classmethod
    def _thresholds_in_range(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0.0 < v <= 1.0]
        if bad:
            raise ValueError(f"every threshold must be in (0, 1] (got {bad[0]})")
        if not values:
            raise ValueError("list at least one threshold")
        return values

    @field_validator("sweep_block_sizes")
    @classmethod
    def _block_sizes_positive(cls, values: list[int]) -> list[int]:
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"every block size must be >= 1 (got {bad[0]})")
        if not values:
            raise ValueError("list at least one block size")
        return values
