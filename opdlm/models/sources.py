"""Resolve a model source string to a local Hugging Face directory.

Schemes are looked up in a registry, so remote sources (``hf://``, ``s3://``, ``builtin:``) slot in
beside local directories without touching the callers (convert, train, eval).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from opdlm.errors import SourceError

Resolver = Callable[[str], Path]
_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(prefix: str, resolver: Resolver) -> None:
    """Route sources starting with ``prefix`` (for example ``"s3://"``) to ``resolver``."""
    _RESOLVERS[prefix] = resolver


def _resolve_hf(src: str) -> Path:
    """``hf://ORG/MODEL[@REVISION]`` through huggingface_hub's cache."""
    spec = src[len("hf://") :]
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1:
        raise SourceError(f"model source {src!r}: expected hf://ORG/MODEL[@REVISION]")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision or None))
    except Exception as exc:  # network, auth, missing repo: one line, with the cause
        raise SourceError(f"could not download {src}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


register_resolver("hf://", _resolve_hf)


def check_model_dir(path: Path, what: str = "model") -> Path:
    """Fail clearly unless ``path`` is a directory holding a ``config.json``."""
    if not path.exists():
        raise SourceError(f"{what} directory {path} does not exist")
    if not path.is_dir():
        raise SourceError(f"{what} path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise SourceError(f"{what} directory {path} has no config.json (is it a Hugging Face model directory?)")
    return path


def resolve_model_source(src: str | Path, what: str = "model") -> Path:
    """Return a local directory for ``src``: a local path, or a registered scheme.

    Raises:
        SourceError: unknown scheme, missing directory, or not a Hugging Face model directory.
    """
    text = str(src)
    for prefix, resolver in _RESOLVERS.items():
        if text.startswith(prefix):
            return check_model_dir(resolver(text), what)
    if "://" in text or text.startswith("builtin:"):
        scheme = text.split("://")[0] + "://" if "://" in text else "builtin:"
        known = ", ".join(sorted(_RESOLVERS)) or "none"
        raise SourceError(f"{what} source {text!r}: unsupported scheme {scheme!r} (registered: {known}; or a local directory)")
    return check_model_dir(Path(text).expanduser(), what)
