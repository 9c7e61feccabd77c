"""The built-in synthetic reasoning suite: verifiable task families with worked solutions.

Every family writes a question, a short worked solution (a scratchpad whose every step is a local,
checkable computation) and a final answer inside ``\\boxed{...}``. The suite is what the tiny teacher
is bootstrapped on and what the default pipeline distils and evaluates, so it has to be learnable by a
model of under a million parameters in minutes on a CPU. That shapes the formats: every scratchpad
step reads either the text just written or one item found by a unique key (a distinct digit or a
variable name), never a position counted from the end of a string, and symbols are written
so that each has one token wherever it appears (see :mod:`opdlm.data.tokenizer`).

Splits never overlap by construction: a question belongs to the evaluation split exactly when a hash
of its text falls in the evaluation bucket (:func:`split_of`), whatever seed or family produced it.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

from opdlm.data.schema import Row

SOURCE_PREFIX = "builtin:synthetic"
# One question in EVAL_BUCKETS of HASH_BUCKETS goes to the evaluation split (10%).
HASH_BUCKETS = 100
EVAL_BUCKETS = 10
DEFAULT_SIZES = {"train": 20_000, "eval": 300}
LETTERS = string.ascii_lowercase
# Largest value of a chain variable.
CHAIN_MAX = 19

Split = Literal["train", "eval"]


class Problem(NamedTuple):
    """One generated problem before it becomes a :class:`Row`."""

    question: str
    response: str
    answer: str


def _boxed(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def make_addition(rng: random.Random) -> Problem:
    """Add 4-7 distinct digits with a running sum: ``7+5=12, 12+8=20, ...``.

    Each step adds the next operand to the previous step's result, so every step reads only the
    result just written and one operand; the operands are distinct, so "the operand after the one
    just used" is never ambiguous.
    """
    digits = rng.sample(range(1, 10), rng.randint(4, 7))
    steps, total = [], digits[0]
    for digit in digits[1:]:
        steps.append(f"{total}+{digit}={total + digit}")
        total += digit
    question = "Compute " + "+".join(map(str, digits)) + "."
    return Problem(question, f"{', '.join(steps)}. {_boxed(str(total))}", str(total))


def make_sorting(rng: random.Random) -> Problem:
    """Sort 4-7 distinct digits, naming the next smallest one at each step."""
    digits = rng.sample(string.digits, rng.randint(4, 7))
    ordered = sorted(digits)
    steps = ", ".join([f"first {ordered[0]}", *(f"then {d}" for d in ordered[1:])])
    answer = "".join(ordered)
    return Problem(f"Sort the digits {' '.join(digits)}.", f"{steps}. {_boxed(answer)}", answer)


def make_reversal(rng: random.Random) -> Problem:
    """Reverse 5-8 distinct digits, naming them from the last one back: ``last 7, then 1, ...``.

    The digits are distinct, so each step is "the rightmost digit not yet named", never ambiguous.
    """
    digits = rng.sample(string.digits, rng.randint(5, 8))
    backwards = digits[::-1]
    steps = ", ".join([f"last {backwards[0]}", *(f"then {d}" for d in backwards[1:])])
    answer = "".join(backwards)
    return Problem(f"Reverse the digits {' '.join(digits)}.", f"{steps}. {_boxed(answer)}", answer)


def make_chain(rng: random.Random) -> Problem:
    """A chain of 3-4 variable assignments, each the previous variable plus or minus a digit.

    Values stay in 0..19, so every step is a small addition or subtraction that a tiny model learns
    as a table; the difficulty is tracking which variable comes next and what it adds.
    """
    names = rng.sample(LETTERS, rng.randint(3, 4))
    value = rng.randint(1, 9)
    definitions, steps = [f"{names[0]}={value}"], [f"{names[0]}={value}"]
    for prev, name in zip(names, names[1:]):
        delta = rng.randint(1, 9)
        op = rng.choice("+-")
        if (op == "-" and value - delta < 0) or (op == "+" and value + delta > CHAIN_MAX):
            op = "+" if op == "-" else "-"
        new_value = value + delta if op == "+" else value - delta
        definitions.append(f"{name}={prev}{op}{delta}")
        steps.append(f"{name}={value}{op}{delta}={new_value}")
        value = new_value
    answer = str(value)
    question = f"Let {', '.join(definitions)}. Find {names[-1]}."
    return Problem(question, f"{', '.join(steps)}. {_boxed(answer)}", answer)


# name -> (generator, domain); the order fixes how rows interleave in a split.
_FAMILY_TABLE: dict[str, tuple[Callable[[random.Random], Problem], str]] = {
    "addition": (make_addition, "math"),
    "sorting": (make_sorting, "logic"),
    "reversal": (make_reversal, "logic"),
    "chain": (make_chain, "math"),
}
# also each row's ``skill``; the recipe validates data.skills against opdlm.config.skills.SYNTHETIC_SKILLS,
# the same names (tests/test_skills.py holds them equal)
FAMILIES: tuple[str, ...] = tuple(_FAMILY_TABLE)
# What a model trained only on this suite (the built-in tiny teacher and its students) knows, said once
# wherever a user first meets one: the model card, `opdlm generate --help`, the README's serving section.
SUITE_SCOPE = (
    "The built-in tiny model (builtin:tiny) knows only the synthetic suite, asked in exactly these words: "
    "'Compute 3+4+5+6+9.' (add 4-7 distinct digits), 'Sort the digits 5 7 6 9 0.' (4-7 distinct digits), "
    "'Reverse the digits 4 9 0 1 8 6.' (5-8 distinct digits) and 'Let n=8, l=n-1, x=l+8. Find x.' (3-4 "
    "chained assignments); it answers with a worked solution ending in \\boxed{...}. Anything else "
    "('What is 12+35?', free text) is outside what it was trained on and gets a confident-looking wrong or "
    "garbled answer."
)


def question_digest(question: str) -> str:
    """Hex SHA-256 of the canonical (whitespace-normalised) question text."""
    canonical = " ".join(question.split())
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def split_of(question: str) -> Split:
    """The split a question belongs to, a pure function of its text (so splits cannot overlap)."""
    bucket = int(question_digest(question)[:8], 16) % HASH_BUCKETS
    return "eval" if bucket < EVAL_BUCKETS else "train"


def _family_stream(family: str, seed: int) -> Iterator[Problem]:
    """An endless deterministic stream of one family's problems for ``seed``."""
    make, _ = _FAMILY_TABLE[family]
    family_seed = int(hashlib.sha256(f"{seed}:{family}".encode()).hexdigest()[:16], 16)
    rng = random.Random(family_seed)
    while True:
        yield make(rng)


def _family_rows(family: str, split: Split, count: int, seed: int) -> list[Row]:
    _, domain = _FAMILY_TABLE[family]
    rows: list[Row] = []
    seen: set[str] = set()
    for problem in _family_stream(family, seed):
        if len(rows) == count:
            break
        digest = question_digest(problem.question)
        if digest in seen or split_of(problem.question) != split:
            continue
        seen.add(digest)
        rows.append(
            Row(
                question=problem.question,
                answer=problem.answer,
                domain=domain,
                source=f"{SOURCE_PREFIX}/{family}",
                response=problem.response,
                id=f"{family}-{digest[:12]}",
                skill=family,
            )
        )
    return rows


def load_split(split: Split, n: int | None = None, seed: int = 0, families: tuple[str, ...] = FAMILIES) -> list[Row]:
    """Rows of the synthetic suite, interleaved family by family (deterministic for ``seed``).

    Args:
        split: ``"train"`` or ``"eval"``; a question's split is fixed by its hash, not by the seed.
        n: number of rows (default ``DEFAULT_SIZES[split]``); families get equal shares, the first
            families one more when ``n`` does not divide evenly.
        seed: different seeds give different (possibly overlapping) samples of the same split.
        families: which families to draw from, a subset of :data:`FAMILIES`.

    Returns:
        ``n`` rows with distinct questions, cycling through ``families`` in order.
    """
    if split not in DEFAULT_SIZES:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    unknown = [f for f in families if f not in _FAMILY_TABLE]
    if unknown or not families:
        raise ValueError(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    n = DEFAULT_SIZES[split] if n is None else n
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    per_family = [n // len(families) + (i < n % len(families)) for i in range(len(families))]
    columns = [_family_rows(f, split, k, seed) for f, k in zip(families, per_family)]
    return [col[i] for i in range(max(per_family, default=0)) for col in columns if i < len(col)]


def family_of(row: Row) -> str:
    """The family name of a synthetic row (its ``skill``; rows written before skills existed: from its ``source``)."""
    return row.skill or row.source.rsplit("/", 1)[-1]


_BOXED = "\\boxed{"


def extract_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None.

    An unclosed final box (a completion cut off by the length cap) gives None.
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for pos in range(begin, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:pos].strip()
    return None


_INTEGER = re.compile(r"[+-]?\d+")


def _compact(text: str) -> str:
    return "".join(text.split())


def is_correct(completion: str, answer: str) -> bool:
    """True when the last boxed answer of ``completion`` equals ``answer`` (spaces ignored).

    A gold answer written as a canonical integer (``7``, ``-12``) matches any integer of the same
    value (``007``); a digit string whose leading zero matters (a sorted ``0235``) must match exactly.
    """
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    predicted, gold = _compact(predicted), _compact(answer)
    if _INTEGER.fullmatch(gold) and str(int(gold)) == gold.lstrip("+") and _INTEGER.fullmatch(predicted):
        return int(predicted) == int(gold)
    return predicted == gold
