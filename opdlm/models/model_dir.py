"""Is a directory a loadable Hugging Face model? Checked before anything is converted, copied or loaded.

Reading a source name (``hf://``, ``s3://``, ``builtin:tiny``) into such a directory is the sources
layer's job (:mod:`opdlm.sources.resolve`); the models layer only ever sees local directories.
"""

from __future__ import annotations

from pathlib import Path

from opdlm.errors import SourceError


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
