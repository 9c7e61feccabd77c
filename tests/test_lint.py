"""The code stays as ruff formats and lints it ([tool.ruff] in pyproject.toml): `ruff format . && ruff check --fix
.`."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed (it is in the test extra: pip install -e '.[test]')")


@pytest.mark.parametrize("args", [["format", "--check"], ["check"]], ids=["format", "lint"])
def test_ruff_is_clean(args):
    run = subprocess.run([*_ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, (
        f"ruff {' '.join(args)} found problems (fix: ruff format . && ruff check --fix .):\n{run.stdout}{run.stderr}"
    )
