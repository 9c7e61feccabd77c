"""Atomic, checksummed training checkpoints (written whole or not at all; verified before loading).

Layout of ``OUT/checkpoints/step-000050/``: the student as an ordinary converted model directory
(``config.json``, safetensors, tokenizer: ``opdlm generate --model`` works on it), ``optimizer.pt``,
``rng_rank{R}.pt``, ``scheduler.json``, ``train_state.json`` (step, counters, data cursor, config
fingerprint), with DeepSpeed ``deepspeed/`` (per-rank optimizer shards) instead of ``optimizer.pt``, and
``manifest.json`` (size and sha256 of every file, written last). A checkpoint is built in a
temporary sibling and renamed into place, so a killed run leaves either nothing or a complete one;
a checkpoint whose manifest is missing or whose files do not match it is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_dir, atomic_write_text
from opdlm.train import distributed

MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


class CheckpointError(OpdlmError):
    """A checkpoint is partial or corrupt."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    root: str | Path, step: int, write_payload: Callable[[Path], None], train_state: dict, keep: int
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and keep only the newest ``keep``.

    In a multi-process run every rank calls this: rank 0 owns the temporary folder and hands its
    path to the others, every rank writes its part through ``write_payload``, and rank 0 writes the
    manifest and renames the folder into place once all ranks are done.

    Args:
        root: the checkpoints folder.
        step: completed rollout steps.
        write_payload: writes model, tokenizer, optimizer and RNG files into the given folder.
        train_state: JSON-ready trainer state (must include ``rollout_step``).
        keep: checkpoints to keep.
    """
    root = Path(root)
    final = root / step_dir_name(step)
    if distributed.rank() != 0:
        write_payload(distributed.broadcast_object(None))
        distributed.barrier()  # payload written everywhere
        distributed.barrier()  # manifest written and folder renamed
        return final
    with atomic_dir(final, overwrite=True) as tmp:
        distributed.broadcast_object(tmp)
        write_payload(tmp)
        distributed.barrier()
        (tmp / TRAIN_STATE).write_text(json.dumps(train_state, indent=1, sort_keys=True))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_tree(tmp)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under ``root``, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path) -> dict:
    """Check ``path`` against its manifest; returns the manifest.

    Raises:
        CheckpointError: no manifest (partial), a file missing, or a size/checksum mismatch.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {path} is partial: it has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path} is corrupt: unreadable {MANIFEST}") from None
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing")
        if f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its checksum")
    return manifest


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint, verified; None when there is none.

    Raises:
        CheckpointError: the newest one is partial or corrupt (the message names an older good one
            to fall back to by deleting the bad folder; nothing is loaded silently).
    """
    found = list_checkpoints(root)
    if not found:
        return None
    try:
        verify_checkpoint(found[-1])
    except CheckpointError as exc:
        older = next((p for p in reversed(found[:-1]) if _is_valid(p)), None)
        hint = f"; delete it to resume from {older.name}" if older else "; delete it to start over"
        raise CheckpointError(f"{exc}{hint}") from None
    return found[-1]


def _is_valid(path: Path) -> bool:
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


def read_train_state(path: str | Path) -> dict:
    return json.loads((Path(path) / TRAIN_STATE).read_text())


def export_model(checkpoint: str | Path, out_dir: str | Path) -> None:
    """Copy the checkpoint's model files into ``out_dir`` (each file replaced atomically, config last)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    files = sorted({p for pat in MODEL_FILE_PATTERNS for p in checkpoint.glob(pat) if p.is_file()})
    files.sort(key=lambda p: p.name == "config.json")  # config.json last: its presence marks a usable model
    for src in files:
        tmp = out_dir / f".{src.name}.tmp-{os.getpid()}"
        shutil.copy2(src, tmp)
        os.replace(tmp, out_dir / src.name)


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
