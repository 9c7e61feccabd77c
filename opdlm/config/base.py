"""Loading YAML, applying ``key=value`` dotted overrides, and turning validation errors into one line.

Every config class derives from :class:`StrictModel`: unknown keys are errors (a typo in a recipe
must not be silently ignored), and every field carries a description that doubles as its doc.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from opdlm.errors import ConfigError, quote
from opdlm.fsutil import read_text

M = TypeVar("M", bound=BaseModel)

# torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; a negative seed only aliases a positive one (it
# is read as unsigned), so seeds are the unsigned range: what a sampling seed (eval, serving) may be
SEED_MAX = 2**64 - 1
# a training seed is multiplied into further seeds (opdlm.train.data: seed * 100_003 + epoch); 32 bits
# keep every derived seed inside torch's range
TRAINING_SEED_MAX = 2**32 - 1


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, assignments are validated, and no
    number is infinite or NaN (YAML's ``.inf``, JSON's ``Infinity``): a bound like ``ge=0`` lets
    infinity through, and NaN fails every comparison silently downstream."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def is_local_source(value: str) -> bool:
    """Whether a source string names a local path (not ``builtin:...`` nor a ``scheme://`` address)."""
    return not value.startswith("builtin:") and "://" not in value


def check_existing(value: str, kind: str) -> str:
    """``value`` when it names an existing ``kind`` (``file``/``directory``); else a ValueError a person understands.

    Relative paths are read from the working directory, as the code that opens them reads them; the
    message says which directory that was, so a recipe run from elsewhere says why it fails.
    """
    path = Path(value).expanduser()
    found = path.is_file() if kind == "file" else path.is_dir()
    if not found:
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        what = f"no such {kind}" if not path.exists() else f"not a {kind}"
        raise ValueError(f"{what}: {value}{where}")
    return value


def check_json_object_file(value: str) -> str:
    """``value`` when it names an existing file holding a JSON object (a DeepSpeed config); else a ValueError."""
    from opdlm.fsutil import read_json_object

    check_existing(value, "file")
    try:
        read_json_object(value, ConfigError)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (for example train.lr=1e-5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override set (values parsed as YAML).

    ``stages.0.rollout_steps=5`` indexes into lists. The keys are checked against the config class
    when the result is validated, so a misspelt key fails there with a suggestion.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        parts, value = _parse_override(item)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, part, parts[: i + 1])]
                continue
            if part not in node or node[part] is None:
                node[part] = {}
            elif not isinstance(node[part], dict | list):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, parts)] = value
        else:
            node[last] = value
    return out


def _list_index(node: list, part: str, path: list[str]) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"override key {'.'.join(path)}: {part!r} indexes a list and must be an integer") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"override key {'.'.join(path)}: index {idx} out of range (list has {len(node)} items)")
    return idx


def _field_names(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Names of the fields valid at ``loc`` (for did-you-mean suggestions)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None:
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cls = _model_in(ann)
    return list(getattr(cls, "model_fields", {}).keys()) if cls is not None else []


def _model_in(ann: Any) -> Any:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, model_cls: type[BaseModel], source: str) -> str:
    """One line that names the field, the value and what is wrong with it."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        valid = _field_names(model_cls, loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
        msg = f"{source}: unknown key {where!r}{hint}"
    else:
        text = first["msg"]
        if text.startswith("Value error, "):
            text = text[len("Value error, ") :]
        got = first.get("input")
        named = isinstance(got, str) and got and got in text  # the message already names the value
        plain = isinstance(got, dict | list) or first["type"] == "missing" or named
        shown = "" if plain else f" (got {quote(got)})"
        # a rule between sections (a model validator) names its own fields: no location to prefix
        msg = f"{source}: {where}: {text}{shown}" if loc else f"{source}: {text}{shown}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return msg


def validate_config(model_cls: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate ``data`` against ``model_cls``; any problem becomes a one-line :class:`ConfigError`."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model_cls, source)) from None


def load_config(model_cls: type[M], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> M:
    """Load ``path`` (YAML), apply dotted ``overrides`` and validate against ``model_cls``."""
    data = apply_overrides(load_yaml(path), list(overrides))
    return validate_config(model_cls, data, source=str(path))
