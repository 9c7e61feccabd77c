"""What a serving engine is to an export: the :class:`Engine` description and the :class:`Refusal` it raises.

Each engine's module (:mod:`opdlm.formats.sglang`, :mod:`opdlm.formats.lmdeploy`) describes itself
with these; :mod:`opdlm.formats.engine` collects the engines and writes the exports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opdlm.errors import OpdlmError


class Refusal(OpdlmError):
    """The engine would serve this student differently from our sampler, silently."""


@dataclass(frozen=True)
class Engine:
    """One serving engine's view of an SDAR-format model.

    Attributes:
        name: ``sglang`` or ``lmdeploy``.
        mask_id: the mask token id the engine hard-codes.
        model_type: what ``config.json``'s ``model_type`` must say for the engine.
        config_fields: field -> (required value or None for "present", where the engine reads it).
        settings: sampler -> (engine settings dict, notes); raises :class:`Refusal`.
        settings_file: file name of the settings in the export.
        launch: (model dir, settings path, settings) -> the shell command that serves it.
    """

    name: str
    mask_id: int
    model_type: str
    config_fields: dict[str, tuple[object, str]]
    settings: Callable
    settings_file: str
    launch: Callable[[str, str, dict], str]
