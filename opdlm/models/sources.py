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


def cache_dir() -> Path:
    """Where resolved remote and built-in models live (``OPDLM_CACHE``, default ``~/.cache/opdlm``)."""
    import os

    return Path(os.environ.get("OPDLM_CACHE", Path.home() / ".cache" / "opdlm"))


def _resolve_s3(src: str) -> Path:
    """``s3://bucket/prefix``: a directory published by :func:`opdlm.storage.s3.upload_dir`."""
    import hashlib

    from opdlm.storage.s3 import download_dir

    dst = cache_dir() / "s3" / hashlib.sha256(src.encode()).hexdigest()[:16]
    if not (dst / "config.json").is_file():
        download_dir(src, dst, overwrite=True)
    return dst


def _resolve_builtin(src: str) -> Path:
    """``builtin:tiny``: the tiny teacher bootstrapped on the synthetic suite (cached by config)."""
    import hashlib

    name = src.split(":", 1)[1]
    if name != "tiny":
        raise SourceError(f"unknown builtin model {src!r} (known: builtin:tiny)")
    from opdlm.teacher import bootstrap_teacher
    from opdlm.teacher.config import BootstrapConfig

    config = BootstrapConfig()
    key = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]
    dst = cache_dir() / "builtin" / f"tiny-{key}"
    if not (dst / "config.json").is_file():
        bootstrap_teacher(dst, config, overwrite=True)
    return dst


register_resolver("hf://", _resolve_hf)
register_resolver("s3://", _resolve_s3)
register_resolver("builtin:", _resolve_builtin)


def check_model_dir(path: Path, what: str = "model") -> Path:
    """Fail clearly unless ``path`` is a directory holding a ``config.json``."""
    if not path.exists():
        raise SourceError(f"{what} directory {path} does not exist")
    if not path.is_dir():
        raise SourceError(f"{what} path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise SourceError(f"{what} directory {path} has no config.json (is it a Hugging Face model directory?)")
    check_weight_files(path, what)
    return path


def check_weight_files(path: Path, what: str = "model") -> None:
    """Fail clearly unless ``path`` holds weights whose safetensors headers parse and cover their files.

    Reads only each file's header (milliseconds even for a sharded 8B model), so a truncated or
    overwritten download is refused here, before anything is converted, copied or written, instead
    of as a ``SafetensorError`` traceback deep inside a load (or, worse, copied on unread).
    """
    from safetensors import SafetensorError, safe_open

    shards = sorted(path.glob("*.safetensors"))
    if not shards and not any(path.glob("*.bin")):
        raise SourceError(f"{what} directory {path} holds no weights (no *.safetensors or *.bin file)")
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise SourceError(
                f"{what} weights {shard} are unreadable ({str(exc).splitlines()[0]}): a truncated or corrupt file; "
                "download or convert it again"
            ) from None


def resolve_model_source(src: str | Path, what: str = "model") -> Path:
    """Return a local directory for ``src``: a local path, or a registered scheme.

    Raises:
        SourceError: unknown scheme, missing directory, or not a Hugging Face model directory.
    """
    text = str(src)
    for prefix, resolver in _RESOLVERS.items():
        if text.startswith(prefix):
            return check_model_dir(resolver(text), what)
    if "://" in text:
        scheme = text.split("://")[0] + "://"
        known = ", ".join(sorted(_RESOLVERS)) or "none"
        raise SourceError(
            f"{what} source {text!r}: unsupported scheme {scheme!r} (registered: {known}; or a local directory)"
        )
    return check_model_dir(Path(text).expanduser(), what)
