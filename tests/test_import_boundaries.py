"""Imports run one way: flows -> tasks -> opdlm; the library never imports orchestration packages at module level."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_LIBRARY = {"prefect", "mlflow", "dvc", "boto3", "botocore"}


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported outside any function or class body."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only; imports inside functions are lazy by design
        for sub in [node] + ([n for n in ast.walk(node)] if isinstance(node, ast.If | ast.Try | ast.With) else []):
            if isinstance(sub, ast.Import):
                names |= {a.name.split(".")[0] for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                names.add(sub.module.split(".")[0])
    return names


def _all_imports(path: Path) -> set[str]:
    names = set()
    for sub in ast.walk(ast.parse(path.read_text())):
        if isinstance(sub, ast.Import):
            names |= {a.name.split(".")[0] for a in sub.names}
        elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
            names.add(sub.module.split(".")[0])
    return names


def test_library_never_imports_orchestration_at_module_level():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_module_level_imports(p) & FORBIDDEN_IN_LIBRARY)
        for p in (ROOT / "opdlm").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_imports_run_one_way():
    """opdlm never imports tasks or flows; tasks never import flows."""
    for p in (ROOT / "opdlm").rglob("*.py"):
        assert not _all_imports(p) & {"tasks", "flows"}, p
    for p in (ROOT / "tasks").rglob("*.py"):
        assert "flows" not in _all_imports(p), p


def test_library_imports_in_a_plain_session():
    import subprocess
    import sys

    code = (
        "import sys, opdlm, opdlm.config, opdlm.models.convert, opdlm.sampling.block_sampler, opdlm.cli.main;"
        "bad = [m for m in ('prefect', 'mlflow', 'dvc', 'boto3') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
