"""File-system helpers: atomic writes (results appear whole under their final name or not at all) and
reads of user files that fail with one line naming the file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from opdlm.errors import OpdlmError


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``out`` only if the block succeeds.

    A failure (exception, KeyboardInterrupt) deletes the temporary directory, so ``out`` is never
    left half-written. The temporary directory lives next to ``out`` so the final rename is atomic
    on the same file system.

    Raises:
        OpdlmError: ``out`` exists and is not empty, and ``overwrite`` is false.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise OpdlmError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OpdlmError(f"output directory {out} already exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
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
