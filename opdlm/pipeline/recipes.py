"""Finding a recipe by path or by name (``tiny`` -> ``configs/tiny.yaml``)."""

from __future__ import annotations

from pathlib import Path

from opdlm.errors import ConfigError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def known_recipes(configs_dir: Path = REPO_CONFIGS) -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in configs_dir.glob("*.yaml")) if configs_dir.is_dir() else []


def resolve_recipe(recipe: str | Path, configs_dir: Path = REPO_CONFIGS) -> Path:
    """The recipe file for ``recipe``: an existing path, or the name of a shipped recipe.

    Raises:
        ConfigError: neither a file nor a known recipe name (the message lists the known names).
    """
    path = Path(recipe).expanduser()
    if path.is_file():
        return path.absolute()
    named = configs_dir / f"{recipe}.yaml"
    if "/" not in str(recipe) and not str(recipe).endswith((".yaml", ".yml")) and named.is_file():
        return named
    known = ", ".join(known_recipes(configs_dir)) or "none"
    raise ConfigError(f"unknown recipe {str(recipe)!r}: no such file, and not a shipped recipe name (known: {known})")
