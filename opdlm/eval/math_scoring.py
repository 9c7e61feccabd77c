"""Math answers checked with math-verify (METHOD §7): ``1/2``, ``0.5`` and ``\\frac{1}{2}`` agree.

The prediction side prefers the last ``\\boxed{...}``, then a GSM8K ``#### N`` line, then whatever
math-verify extracts from the text (its own cascade ends at the last number). The gold side is
parsed as a bare expression, with LaTeX delimiters added when it is written in LaTeX.
"""

from __future__ import annotations

import re
import threading

# math-verify enforces its timeouts with SIGALRM, which only the main thread may use.
_TIMEOUT_S = 5

_GSM8K_ANSWER = re.compile(r"####\s*([^\n]+)")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def gsm8k_final_answer(text: str) -> str | None:
    """The number after the last ``####`` (GSM8K's answer marker), commas removed; None when absent."""
    found = _GSM8K_ANSWER.findall(text)
    if not found:
        return None
    return found[-1].strip().replace(",", "").rstrip(".")


def _timeouts() -> dict:
    on_main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": _TIMEOUT_S if on_main else None}


def parse_gold(answer: str) -> list:
    """math-verify's parse of a ground-truth answer written as plain text or LaTeX."""
    from math_verify import parse

    answer = answer.strip()
    wrapped = answer if answer.startswith("$") or "\\boxed" in answer else f"${answer}$"
    parsed = parse(wrapped, **_timeouts())
    return parsed or parse(answer, **_timeouts())


def parse_prediction(completion: str) -> list:
    """math-verify's parse of a model completion (last boxed answer, then ``####``, then free text)."""
    from math_verify import parse

    boxed = last_boxed(completion)
    if boxed is not None:
        return parse(f"\\boxed{{{boxed}}}", **_timeouts())
    marked = gsm8k_final_answer(completion)
    if marked:
        return parse(f"${marked}$", **_timeouts())
    return parse(completion, **_timeouts())


def math_equal(completion: str, answer: str) -> bool:
    """Whether ``completion``'s final answer equals ``answer`` mathematically (math-verify)."""
    from math_verify import verify

    gold, pred = parse_gold(answer), parse_prediction(completion)
    if not gold or not pred:
        return False
    on_main = threading.current_thread() is threading.main_thread()
    return bool(verify(gold, pred, timeout_seconds=_TIMEOUT_S if on_main else None))
