"""The names of the built-in benchmarks, in the order they are listed: what ``eval.benchmarks`` accepts.

The names live here, in the config layer, so a recipe is validated without importing the evaluation
package; :mod:`opdlm.eval.benchmarks` registers one :class:`~opdlm.eval.benchmarks.Benchmark` for
each, under exactly these names (``tests/test_loaders.py`` holds the two equal).
"""

BENCHMARK_NAMES: tuple[str, ...] = (
    "synthetic",
    "gsm8k",
    "gsm8k_heldout",
    "math500",
    "aime24",
    "aime25",
    "mmlu",
    "mmlu_pro",
    "gpqa_diamond",
    "humaneval",
    "mbpp",
    "champ",
)
