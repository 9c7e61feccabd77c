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


def weight_shapes(path: Path, what: str = "model", where: str | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of ``path``'s safetensors weights: ``name -> (shape, file name)``, from the headers only.

    With ``model.safetensors.index.json`` the index decides: every shard it names must be there and
    hold the tensors it assigns to it. Without one, every ``*.safetensors`` file counts.

    Raises:
        SourceError: a shard the index names is missing, or lacks a tensor the index puts there.
    """
    from safetensors import safe_open

    from opdlm.fsutil import read_json_object

    shown = Path(where or path)
    index_file = path / "model.safetensors.index.json"
    weight_map: dict | None = None
    if index_file.is_file():
        weight_map = read_json_object(index_file, SourceError).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise SourceError(f"{what} index {shown / index_file.name} has no weight_map")
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (path / shard).is_file():
                named = sum(1 for v in weight_map.values() if v == shard)
                raise SourceError(
                    f"{what} index {shown / index_file.name} puts {named} tensors in {shard}, which is not in "
                    f"{shown}: an incomplete download or copy; fetch the missing shard"
                )
        files = sorted({path / str(v) for v in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                shapes[name] = (tuple(fh.get_slice(name).get_shape()), file.name)
    if weight_map is not None:
        for name, shard in weight_map.items():
            if shapes.get(name, (None, None))[1] != shard:
                raise SourceError(f"{what} index {shown / index_file.name} puts {name!r} in {shard}, which lacks it")
    return shapes


def check_weights_match_config(path: Path, what: str = "model", where: str | None = None) -> None:
    """Fail unless ``path``'s safetensors weights are exactly what its ``config.json`` builds.

    The model its config describes is built on the meta device (no memory, no weights read) and
    every parameter and persistent buffer is looked up in the safetensors headers: a missing tensor
    (e.g. a shard the index names but the folder lacks) or one whose shape the config's sizes
    contradict is refused here, in milliseconds, rather than as a traceback when the model first
    loads. A tied ``lm_head.weight`` may be absent; weights that are not safetensors are not checked.

    Args:
        path: the model directory.
        what: what it is, for messages ("teacher", "student").
        where: how messages name the directory (default ``path``; e.g. the final name of a folder
            still being written under a temporary one).

    Raises:
        SourceError: one line naming the tensor, its file and both shapes.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
        return
    found = weight_shapes(path, what, where)
    shown = where or str(path)
    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - any failure to build from a user's config.json is a bad config
        first = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), type(exc).__name__)
        raise SourceError(f"{what} {shown}/config.json does not build a model: {first[:300]}") from None
    tied = getattr(config.get_text_config(), "tie_word_embeddings", False) or getattr(
        config, "tie_word_embeddings", False
    )
    missing = [k for k in expected if k not in found and not (tied and k == "lm_head.weight")]
    if missing:
        raise SourceError(
            f"{what} {shown}: weight {missing[0]!r} that config.json asks for is in no safetensors file "
            f"({len(missing)} missing)"
        )
    wrong = [k for k, shape in expected.items() if k in found and found[k][0] != shape]
    if wrong:
        k = wrong[0]
        raise SourceError(
            f"{what} {shown}: weight {k!r} is {list(found[k][0])} in {found[k][1]} but config.json's sizes make it "
            f"{list(expected[k])} ({len(wrong)} tensors disagree): config.json does not describe these weights"
        )
