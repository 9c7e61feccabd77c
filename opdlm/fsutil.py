"""File-system helpers: atomic writes (results appear whole under their final name or not at all), guarded
output locations (a command never replaces what it did not create, nor writes over its own inputs) and
reads of user files that fail with one line naming the file."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from opdlm.errors import OpdlmError

# (temporary directory, the path it is published as) of every atomic_dir block now open, outermost first
_PUBLISHING: contextvars.ContextVar[tuple[tuple[Path, Path], ...]] = contextvars.ContextVar("publishing", default=())


def check_output_location(
    out: str | Path,
    inputs: Mapping[str, str | Path | None] | None = None,
    *,
    flag: str = "output path",
    replaces: bool = True,
) -> None:
    """Refuse an output location that would destroy an input or the working directory.

    ``out`` may not be an input, lie inside one (writing there alters the input) or, when the command
    replaces ``out`` as a whole (``replaces``), hold one or the current directory: replacing it would
    delete them. ``--overwrite`` never lifts this. Inputs that are not local paths (``hf://``,
    ``s3://``, ``builtin:``) or do not exist are skipped.

    Args:
        out: the output path (file or folder) a command is about to write.
        inputs: what the command reads, by the option that names it, e.g. ``{"--train-dir": path}``.
        flag: the option that named ``out`` (for the message).
        replaces: whether ``out`` is replaced as a whole (a folder published by :func:`atomic_dir`).

    Raises:
        OpdlmError: one line naming both options and paths.
    """
    target = Path(out).resolve()
    for name, given in (inputs or {}).items():
        if given is None or "://" in str(given) or str(given).startswith("builtin:"):
            continue
        source = Path(given).resolve()
        if not source.exists():
            continue
        if target == source:
            raise OpdlmError(
                f"{flag} {out} is the {name} itself; an output never replaces an input: choose another path"
            )
        if target.is_relative_to(source):
            raise OpdlmError(f"{flag} {out} is inside the {name} {given}; write outside it")
        if replaces and source.is_relative_to(target):
            raise OpdlmError(
                f"{flag} {out} holds the {name} {given}; replacing it would delete it: choose a folder outside it"
            )
    if replaces and Path.cwd().resolve().is_relative_to(target):
        raise OpdlmError(f"{flag} {out} holds the current directory; replacing it would delete it: choose another")


def check_replaceable(out: str | Path, overwrite: bool = False, *, flag: str = "output directory") -> None:
    """Refuse a folder :func:`atomic_dir` would replace without leave: ``out`` is a file, or a non-empty
    folder and not ``overwrite``. Callers run it before expensive work (a download, a bootstrap)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OpdlmError(f"{flag} {out} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OpdlmError(f"{flag} {out} already exists and is not empty (pass --overwrite to replace it)")


def published_path(path: str | Path) -> str | Path:
    """The path ``path`` will have once every :func:`atomic_dir` block now open is published.

    Whatever a result records about where its files are (a samples file, a sweep point) goes through
    here, so the record names the final file, not the temporary folder it was written in. A path
    outside those folders comes back unchanged.
    """
    found = Path(path).absolute()
    moved = False
    for tmp, final in reversed(_PUBLISHING.get()):  # innermost first: its final path lies in the next one's tmp
        if found.is_relative_to(tmp):
            found, moved = final / found.relative_to(tmp), True
    return (str(found) if isinstance(path, str) else found) if moved else path


@contextlib.contextmanager
def atomic_dir(
    out: str | Path,
    *,
    overwrite: bool = False,
    inputs: Mapping[str, str | Path | None] | None = None,
    flag: str = "output directory",
) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``out`` only if the block succeeds.

    A failure (exception, KeyboardInterrupt, SIGTERM) deletes the temporary directory, so ``out`` is
    never left half-written. The temporary directory lives next to ``out`` so the final rename is
    atomic on the same file system. Inside the block, :func:`published_path` maps paths under the
    temporary directory to their final place.

    Args:
        out: the folder to publish.
        overwrite: replace an existing non-empty ``out`` (the user said ``--overwrite``); without it
            such a folder, which this command did not create, is refused.
        inputs: what the command reads (see :func:`check_output_location`): never replaced, even
            with ``overwrite``.
        flag: the option that named ``out`` (for messages; default "output directory").

    Raises:
        OpdlmError: ``out`` exists and is not empty, and ``overwrite`` is false; ``out`` is a file;
            ``out`` is, holds or lies inside an input or holds the current directory.
    """
    check_output_location(out, inputs, flag=flag)
    check_replaceable(out, overwrite, flag=flag)
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    token = _PUBLISHING.set((*_PUBLISHING.get(), (tmp, out)))
    try:
        try:
            yield tmp
        finally:
            _PUBLISHING.reset(token)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_text(path: str | Path) -> str:
    """The text of a user's file, decoded as UTF-8 (a leading BOM is dropped).

    Every file a user hands a command (data, completions, benchmark files, recipes) is read through
    here, so a file in another encoding fails with one line naming the file, line and byte instead
    of a ``UnicodeDecodeError`` traceback. ``.gz`` files are decompressed first.

    Raises:
        OpdlmError: the file is not UTF-8 text.
    """
    import gzip

    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise OpdlmError(f"{path}: not a readable gzip file ({exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise OpdlmError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def read_json_object(path: str | Path, error: type[OpdlmError] = OpdlmError, context: str = "") -> dict:
    """A JSON file holding an object, as a dict.

    A missing file, text that is not UTF-8 or not JSON, or JSON that is not an object fails with one
    line: ``error(context + message naming the file)`` (``context`` e.g. ``"train.deepspeed: "``).
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise error(f"{context}{path} not found")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise error(f"{context}{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except OpdlmError as exc:
        raise error(f"{context}{exc}") from None
    if not isinstance(data, dict):
        raise error(f"{context}{path} must hold a JSON object")
    return data


# Files above this size are fingerprinted by size + head + tail: hashing tens of GB of weights on every
# pipeline run would cost minutes, and a changed checkpoint changes its head bytes (safetensors header).
FULL_HASH_LIMIT = 64 * 1024 * 1024
EDGE_BYTES = 8 * 1024 * 1024


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(EDGE_BYTES))
            fh.seek(size - EDGE_BYTES)
            h.update(fh.read(EDGE_BYTES))
            h.update(str(size).encode())
    return h.hexdigest()


def dir_fingerprint(path: str | Path, length: int = 16) -> str:
    """Fingerprint of a directory's files (relative names and bytes; hidden files skipped): sha256 hex, first
    ``length`` chars. Files up to 64 MiB are hashed whole; larger ones by size plus their first and last 8 MiB.
    """
    root = Path(path)
    entries = [
        (p.relative_to(root).as_posix(), _file_digest(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    blob = json.dumps([entries], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
