"""Multiple-choice answers: a regex cascade from the most to the least explicit form (METHOD §7).

1. the last ``\\boxed{X}`` (also ``\\boxed{\\text{X}}`` and ``\\boxed{(X)}``);
2. the last ``answer: X`` / ``answer is X`` / ``answer is (X)`` (any case, optional markdown bold);
3. the last standalone option letter (``X`` not inside a word, e.g. ``(C)`` or ``C.``).

Only letters that name an option of the question count, so "I think A is wrong" with options A-D
does match A at step 3; that is the cascade's known weakness and the reason steps 1-2 come first.
"""

from __future__ import annotations

import re
import string

from opdlm.eval.math_scoring import last_boxed


def option_letters(n: int) -> str:
    """The first ``n`` option letters: ``A``, ``B``, ..."""
    if not 1 <= n <= 26:
        raise ValueError(f"a multiple-choice question needs 1-26 options (got {n})")
    return string.ascii_uppercase[:n]


def _letter_in_box(boxed: str, letters: str) -> str | None:
    inner = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", boxed)
    inner = inner.strip().strip("()[]. ").upper()
    return inner if len(inner) == 1 and inner in letters else None


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The option letter ``text`` commits to, or None.

    Args:
        text: the model's completion.
        letters: the valid option letters, e.g. ``"ABCD"`` or ``option_letters(10)``.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        found = _letter_in_box(boxed, letters)
        if found:
            return found
    cls = f"[{re.escape(letters)}]"
    # Only the keyword ignores case: "the answer is a number" must not read as option A.
    stated = re.findall(
        rf"(?i:answer)\s*(?:(?i:is)\s*)?:?\s*\**\s*(?:(?i:option)\s*)?[\(\[]?({cls})[\)\]]?(?![A-Za-z'])", text
    )
    if stated:
        return stated[-1]
    standalone = re.findall(rf"(?<![A-Za-z0-9_'])({cls})(?![A-Za-z0-9_'])", text)
    return standalone[-1] if standalone else None


def choice_equal(completion: str, answer: str, letters: str = "ABCD") -> bool:
    """Whether the letter extracted from ``completion`` is the gold letter ``answer``."""
    return extract_choice(completion, letters) == answer.strip().upper()
