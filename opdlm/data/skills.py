"""The skill filter of the training data (``data.skills``): keep only the rows of some skills.

The built-in synthetic suite draws its rows family by family, so a filter there is a choice of
families (:func:`opdlm.data.synthetic.load_split`), and the pool keeps its size; rows from a file
are filtered on their ``skill`` field (:func:`select_skills`). Evaluation never filters: it scores
every skill and reports each (:mod:`opdlm.eval.metrics`).
"""

from __future__ import annotations

from opdlm.data.schema import Row
from opdlm.errors import ConfigError


def select_skills(rows: list[Row], skills: list[str] | None, where: str) -> list[Row]:
    """The rows whose ``skill`` is one of ``skills`` (all rows when ``skills`` is None), order kept.

    Args:
        where: the rows' origin, for messages (a file name or a source).

    Raises:
        ConfigError: a listed skill no row has (a typo, or the wrong file), or rows without a skill.
    """
    if skills is None:
        return rows
    present = {r.skill for r in rows}
    if present == {None}:
        raise ConfigError(f"data.skills is set but the rows of {where} carry no skill field")
    missing = [s for s in skills if s not in present]
    if missing:
        known = ", ".join(sorted(s for s in present if s is not None))
        raise ConfigError(f"data.skills: no row of {where} has skill {missing[0]!r} (skills there: {known})")
    wanted = set(skills)
    return [r for r in rows if r.skill in wanted]


def synthetic_families(skills: list[str] | None, source: str) -> tuple[str, ...]:
    """The synthetic suite's families a builtin:synthetic source draws from: ``skills``, else all of them.

    Raises:
        ConfigError: a skill the suite does not have (one line naming it and the suite's skills).
    """
    from opdlm.data.synthetic import FAMILIES

    unknown = [s for s in skills or () if s not in FAMILIES]
    if unknown:
        raise ConfigError(f"unknown skill {unknown[0]!r} in data.skills; {source} has {', '.join(FAMILIES)}")
    return tuple(skills or FAMILIES)
