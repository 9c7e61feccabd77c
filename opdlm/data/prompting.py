"""Turning a row's question into the model's prompt text, the same way everywhere.

Rollouts, teacher targets (they read the rollout's prompt ids), evaluation, serving, ``opdlm
generate`` and the teacher bootstrap all call :func:`format_prompt`, so the student never sees a
prompt shaped differently from the one it was trained on. ``enable_thinking`` comes from the
recipe's ``convert.enable_thinking`` (stamped into the student's config.json as ``enable_thinking``).
"""

from __future__ import annotations

MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def format_prompt(
    tokenizer, question: str, domain: str | None = None, math_suffix: bool = False, enable_thinking: bool = False
) -> str:
    """The prompt text for ``question``: the tokenizer's chat template when it has one, else raw.

    Args:
        tokenizer: a Hugging Face tokenizer.
        question: the row's question.
        domain: the row's domain; with ``math_suffix`` the paper's math instruction is appended for
            ``domain == "math"`` (METHOD §6).
        enable_thinking: passed to the chat template. Qwen3's template appends an empty
            ``<think>\n\n</think>\n\n`` after the generation prompt when it is false (non-thinking
            mode, the paper's default); templates without the variable ignore it.
    """
    text = question + (MATH_SUFFIX if math_suffix and domain == "math" else "")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=bool(enable_thinking),
        )
    return text


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of already formatted prompts (no extra special tokens: the template has them)."""
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
