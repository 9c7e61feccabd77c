"""The benchmark registry: for each name, how to load it, prompt for it and score it.

Adding a benchmark means one loader in :mod:`opdlm.eval.loaders`, one :class:`Benchmark` entry
here and its name in :data:`opdlm.config.benchmarks.BENCHMARK_NAMES` (what recipes are validated
against); the harness, ``opdlm eval`` and ``opdlm score`` pick it up by name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opdlm.config.benchmarks import BENCHMARK_NAMES
from opdlm.data.schema import Row
from opdlm.errors import OpdlmError
from opdlm.eval import loaders
from opdlm.eval.code_scoring import humaneval_program, mbpp_program

Scorer = Literal["synthetic", "math", "choice", "code"]

CHOICE_INSTRUCTION = "\n\nAnswer with the letter of the correct option, written as \\boxed{X}."
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in a ```python code block.\n\n"
)
MBPP_INSTRUCTION = "\nReply with the Python code in a ```python code block."


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set.

    Attributes:
        name: registry key (``opdlm eval --benchmark NAME``).
        description: one line for ``--help`` and reports.
        scorer: ``synthetic`` (the suite's own checker), ``math`` (math-verify), ``choice`` (regex
            cascade) or ``code`` (sandboxed tests).
        load: ``(data_dir, seed) -> rows`` in the canonical schema.
        max_new_tokens: default generation cap.
        math_suffix: append the paper's "reason step by step ... \\boxed{}" instruction (METHOD §6).
        choice_letters: valid option letters for ``choice`` benchmarks.
        program: for ``code``: ``(row, completion) -> test program``.
    """

    name: str
    description: str
    scorer: Scorer
    load: Callable[[Path, int], list[Row]]
    max_new_tokens: int
    math_suffix: bool = False
    choice_letters: str = ""
    program: Callable[[Row, str], str] | None = None

    def question_text(self, row: Row) -> str:
        """The user message for ``row`` (before the chat template and the math suffix)."""
        if self.scorer == "choice":
            return row.question + CHOICE_INSTRUCTION
        if self.name == "humaneval":
            return f"{HUMANEVAL_INSTRUCTION}```python\n{row.question}```"
        if self.name == "mbpp":
            return row.question + MBPP_INSTRUCTION
        return row.question


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "synthetic",
            "built-in synthetic reasoning suite, held-out split",
            "synthetic",
            lambda d, seed: loaders.load_synthetic(d, seed),
            128,
        ),
        Benchmark(
            "gsm8k",
            "GSM8K test (grade-school math word problems)",
            "math",
            lambda d, seed: loaders.load_gsm8k(d),
            512,
            math_suffix=True,
        ),
        Benchmark(
            "gsm8k_heldout",
            "GSM8K test problems of the 40 templates builtin:gsm-symbolic holds out (real rows, from PyPI)",
            "math",
            lambda d, seed: loaders.load_gsm8k_heldout(d),
            512,
            math_suffix=True,
        ),
        Benchmark(
            "math500",
            "MATH-500 (competition math)",
            "math",
            lambda d, seed: loaders.load_math500(d),
            1024,
            math_suffix=True,
        ),
        Benchmark("aime24", "AIME 2024", "math", lambda d, seed: loaders.load_aime24(d), 2048, math_suffix=True),
        Benchmark("aime25", "AIME 2025", "math", lambda d, seed: loaders.load_aime25(d), 2048, math_suffix=True),
        Benchmark(
            "mmlu",
            "MMLU test (57 subjects, 4 options)",
            "choice",
            lambda d, seed: loaders.load_mmlu(d),
            512,
            choice_letters="ABCD",
        ),
        Benchmark(
            "mmlu_pro",
            "MMLU-Pro test (up to 10 options)",
            "choice",
            lambda d, seed: loaders.load_mmlu_pro(d),
            1024,
            choice_letters="ABCDEFGHIJ",
        ),
        Benchmark(
            "gpqa_diamond",
            "GPQA-Diamond (4 options, shuffled per seed)",
            "choice",
            lambda d, seed: loaders.load_gpqa_diamond(d, seed),
            1024,
            choice_letters="ABCD",
        ),
        Benchmark(
            "humaneval",
            "HumanEval (164 Python functions)",
            "code",
            lambda d, seed: loaders.load_humaneval(d),
            512,
            program=humaneval_program,
        ),
        Benchmark(
            "mbpp",
            "MBPP test split (task ids 11-510)",
            "code",
            lambda d, seed: loaders.load_mbpp(d),
            512,
            program=mbpp_program,
        ),
        Benchmark(
            "champ",
            "CHAMP (270 competition problems with final answers, from PyPI)",
            "math",
            lambda d, seed: loaders.load_champ(d),
            1024,
            math_suffix=True,
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``.

    Raises:
        OpdlmError: unknown name (with a suggestion and the valid names).
    """
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    close = difflib.get_close_matches(name, BENCHMARK_NAMES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise OpdlmError(f"unknown benchmark {name!r}; {hint}choose from {', '.join(BENCHMARK_NAMES)}")


def load_benchmark(name: str, data_dir: str | Path, limit: int | None = None, seed: int = 0) -> list[Row]:
    """The first ``limit`` rows (all when None) of benchmark ``name`` from ``data_dir``."""
    if limit is not None and limit < 1:
        raise OpdlmError(f"limit must be >= 1 (got {limit})")
    rows = get_benchmark(name).load(Path(data_dir), seed)
    return rows[:limit] if limit is not None else rows
