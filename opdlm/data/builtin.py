"""The built-in training data sources, by name: what ``data.source: builtin:...`` may say.

``builtin:synthetic``     the synthetic reasoning suite's train split (:mod:`opdlm.data.synthetic`)
``builtin:gsm-symbolic``  numeric variants of the 60 training templates of real GSM8K test problems
                          (:mod:`opdlm.data.gsm_symbolic`; the other 40 are the ``gsm8k_heldout`` benchmark)

Both draw ``n`` rows deterministically from ``seed``; the data stage and ``opdlm train`` ask here.
"""

from __future__ import annotations

from opdlm.data.schema import Row
from opdlm.errors import SourceError

BUILTIN_DATASETS = ("builtin:synthetic", "builtin:gsm-symbolic")


def builtin_rows(source: str, n: int | None, seed: int, skills: list[str] | None = None) -> list[Row]:
    """``n`` training rows of built-in source ``source`` drawn with ``seed`` (of ``skills`` only, when given:
    builtin:synthetic draws from those families alone, :mod:`opdlm.data.skills`).

    Raises:
        SourceError: an unknown name, or a source that yields no rows.
    """
    if source == "builtin:synthetic":
        from opdlm.data.skills import synthetic_families
        from opdlm.data.synthetic import load_split

        rows = load_split("train", n=n, seed=seed, families=synthetic_families(skills, source))
    elif source == "builtin:gsm-symbolic":
        from opdlm.data.gsm_symbolic import training_rows
        from opdlm.data.skills import select_skills

        rows = select_skills(training_rows(n, seed), skills, source)
    else:
        raise SourceError(f"unknown builtin dataset {source!r} (known: {', '.join(BUILTIN_DATASETS)})")
    if not rows:
        raise SourceError(f"{source} returned no training rows")
    return rows
