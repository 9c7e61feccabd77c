"""Code benchmarks: turn a completion into the test program that :mod:`opdlm.eval.sandbox` runs.

HumanEval programs are ``prompt + completion + test + check(entry_point)``; MBPP programs are
``completion + test_list``. A completion may be a bare continuation (what a base model writes) or
a chat answer with a fenced code block; :func:`extract_code` accepts both, and a full function
definition placed after the prompt simply redefines the prompt's stub.
"""

from __future__ import annotations

import re

from opdlm.data.schema import Row

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def code_candidates(completion: str) -> list[str]:
    """Readings of ``completion`` as code, most specific first, without duplicates.

    Fenced blocks holding a ``def``, then any fenced block, then the text before the first fence
    (a continuation that closed the prompt's open fence), then the whole text.
    """
    blocks = _FENCE.findall(completion)
    with_def = [b for b in blocks if re.search(r"^\s*def\s", b, re.MULTILINE)]
    before_fence = completion.split("```", 1)[0]
    return list(dict.fromkeys([*with_def, *blocks, before_fence, completion]))


def _compiles(source: str) -> bool:
    try:
        compile(source, "<candidate>", "exec")  # parses only; nothing runs outside the sandbox
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def extract_code(completion: str, prefix: str = "") -> str:
    """The first reading of ``completion`` (see :func:`code_candidates`) that compiles after ``prefix``.

    When none compiles, the most specific reading is returned and the test program fails as it should.
    """
    candidates = code_candidates(completion)
    return next((c for c in candidates if _compiles(prefix + c)), candidates[0])


def humaneval_program(row: Row, completion: str) -> str:
    """The HumanEval test program for ``completion`` of ``row`` (``row.tests`` ends with ``check(...)``)."""
    return f"{row.question}{extract_code(completion, prefix=row.question)}\n\n{row.tests}"


def mbpp_program(row: Row, completion: str) -> str:
    """The MBPP test program: the completion's code followed by the row's assertions."""
    return f"{extract_code(completion)}\n\n{row.tests}"
