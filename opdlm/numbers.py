"""Numbers as people read them, rounded one way everywhere: logs, summaries, model cards, responses.

Three kinds of figure, each with one rule:

- a **fraction** (accuracy, retention): 4 decimals, ``0.9545``;
- a **rate** (tokens per step, forwards per sample): 2 decimals, ``2.33``;
- a **count** (training tokens, rows): thousands separators, ``1,234,567``.

``show_*`` gives the text (``n/a`` for a missing value); ``rounded_*`` gives the rounded number, for
machine-readable places people also read (an HTTP response, an MLflow tag).
"""

from __future__ import annotations

FRACTION_DIGITS = 4
RATE_DIGITS = 2
MISSING = "n/a"


def rounded_fraction(value: float | None) -> float | None:
    return None if value is None else round(float(value), FRACTION_DIGITS)


def rounded_rate(value: float | None) -> float | None:
    return None if value is None else round(float(value), RATE_DIGITS)


def show_fraction(value: float | None) -> str:
    """``0.954545`` -> ``0.9545``; None -> ``n/a``."""
    return MISSING if value is None else f"{float(value):.{FRACTION_DIGITS}f}"


def show_rate(value: float | None) -> str:
    """``2.3333`` -> ``2.33``; None -> ``n/a``."""
    return MISSING if value is None else f"{float(value):.{RATE_DIGITS}f}"


def show_count(value: int | float | None) -> str:
    """``1234567`` -> ``1,234,567``; None -> ``n/a``."""
    return MISSING if value is None else f"{int(value):,}"
