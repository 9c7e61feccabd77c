"""The canonical row schema every dataset is normalised to (training prompts and benchmarks alike)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from opdlm.config.base import StrictModel
from opdlm.errors import OpdlmError
from opdlm.fsutil import read_text


class Row(StrictModel):
    """One prompt with its verifiable answer.

    ``response`` (a full reference solution) is optional: OPD never needs it; the masked-diffusion
    baseline trains on it and the tiny teacher is bootstrapped from it.
    """

    question: str = Field(..., min_length=1, description="The prompt text (before any chat template).")
    answer: str = Field(..., description="Ground-truth final answer; used for scoring only, never in the OPD loss.")
    domain: str = Field(
        ..., min_length=1, description="math, code, stem, chat, ... (per-domain length caps key on it)."
    )
    source: str = Field(..., min_length=1, description="Where the row comes from, e.g. builtin:synthetic/arith.")
    tests: str | None = Field(None, description="For code: test program run against the completion.")
    response: str | None = Field(None, description="Optional reference solution (worked response).")
    id: str | None = Field(None, description="Stable row id (benchmark task id).")
    skill: str | None = Field(
        None,
        description="What the row exercises (the synthetic suite: its task family); data.skills filters on it "
        "and evaluation reports accuracy per skill.",
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v


def read_rows(path: str | Path) -> list[Row]:
    """Read and validate a JSONL file of rows; a bad row fails with file and line number."""
    path = Path(path)
    if not path.is_file():
        raise OpdlmError(f"dataset file not found: {path}")
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(Row.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise OpdlmError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "row"
            raise OpdlmError(f"{path}:{lineno}: field {field!r}: {err['msg']}") from None
    if not rows:
        raise OpdlmError(f"dataset file {path} has no rows")
    return rows
