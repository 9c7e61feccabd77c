"""Resolve a model source string to a local, checked Hugging Face directory.

A source is ``hf://ORG/MODEL[@REVISION]`` (through huggingface_hub's cache), ``s3://bucket/prefix``
(a directory published by :func:`opdlm.storage.s3.upload_dir`, cached under ``OPDLM_CACHE``),
``builtin:tiny`` (bootstrapped with a recipe's teacher settings, :mod:`opdlm.sources.builtin`), a GGUF
file (a local ``*.gguf``, ``s3://.../*.gguf`` or a pinned one such as ``builtin:smollm2-135m-instruct``,
dequantized into a cached Hugging Face directory by :mod:`opdlm.sources.gguf`) or a local directory.
Convert, train, the pipeline, the study and the CLI all come here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from opdlm.config.recipe import Recipe
from opdlm.config.teacher import TeacherConfig
from opdlm.errors import SourceError
from opdlm.models.model_dir import check_model_dir
from opdlm.sources.builtin import BUILTIN_PREFIX, builtin_teacher
from opdlm.sources.cache import cache_dir
from opdlm.sources.gguf import is_gguf_source, resolve_gguf


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


def _resolve_s3(src: str) -> Path:
    """``s3://bucket/prefix``: a directory published by :func:`opdlm.storage.s3.upload_dir`."""
    import hashlib

    from opdlm.storage.s3 import download_dir

    dst = cache_dir() / "s3" / hashlib.sha256(src.encode()).hexdigest()[:16]
    if not (dst / "config.json").is_file():
        download_dir(src, dst, overwrite=True)
    return dst


REMOTE: dict[str, Callable[[str], Path]] = {"hf://": _resolve_hf, "s3://": _resolve_s3}


def resolve_model_source(
    src: str | Path, what: str = "model", teacher: TeacherConfig | None = None, enable_thinking: bool = False
) -> Path:
    """Return a local directory for ``src``: a local path, a remote scheme, or a built-in model.

    Args:
        src: the source (see the module docstring).
        what: what the directory is, for error messages (``teacher``, ``student``, ...).
        teacher: for ``builtin:`` sources, the recipe's ``teacher`` section whose ``bootstrap``
            settings build it; None: a recipe's defaults (for callers without a recipe, such as
            ``opdlm convert --teacher builtin:tiny``). Callers with a recipe use :func:`resolve_teacher`.
        enable_thinking: for ``builtin:`` sources, the recipe's ``convert.enable_thinking``.

    Raises:
        SourceError: unknown scheme or built-in name, missing directory, not a Hugging Face model directory,
            or a GGUF file that is truncated, fails its checksum or has an architecture that cannot be converted.
    """
    text = str(src)
    if is_gguf_source(text):
        return check_model_dir(resolve_gguf(text), what)
    if text.startswith(BUILTIN_PREFIX):
        return check_model_dir(builtin_teacher(text, teacher or TeacherConfig(), enable_thinking), what)
    for prefix, resolver in REMOTE.items():
        if text.startswith(prefix):
            return check_model_dir(resolver(text), what)
    if "://" in text:
        scheme = text.split("://")[0] + "://"
        known = ", ".join(sorted([*REMOTE, BUILTIN_PREFIX]))
        raise SourceError(
            f"{what} source {text!r}: unsupported scheme {scheme!r} (registered: {known}; or a local directory)"
        )
    return check_model_dir(Path(text).expanduser(), what)


def teacher_source(recipe: Recipe, override: str | None = None) -> str:
    """The teacher a run uses: ``override`` (``--teacher``) when given, else ``teacher.path``, else
    ``teacher.source``."""
    return override or recipe.teacher.path or recipe.teacher.source


def resolve_teacher(recipe: Recipe, override: str | None = None) -> Path:
    """The recipe's teacher as an absolute local directory (``builtin:tiny`` built with the recipe's settings).

    Raises:
        SourceError: as :func:`resolve_model_source`.
    """
    src = teacher_source(recipe, override)
    return resolve_model_source(src, "teacher", recipe.teacher, recipe.convert.enable_thinking).absolute()
