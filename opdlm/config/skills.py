"""The skills of the built-in synthetic suite: what ``data.skills`` accepts for ``builtin:synthetic``.

The names live here, in the config layer, so a recipe's skill filter is validated when it loads
(a typo fails in a second, before any data or model work) without importing the data package;
:mod:`opdlm.data.synthetic` generates one task family under each of exactly these names, in this
order (``tests/test_skills.py`` holds the two equal).
"""

SYNTHETIC_SKILLS: tuple[str, ...] = ("addition", "sorting", "reversal", "chain")
