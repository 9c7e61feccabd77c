"""``dvc repro`` in a fresh git repository reproduces the tiny run from dvc.yaml, a second ``dvc repro``
does nothing, and the outputs round-trip through an S3 remote (moto on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline_support import SMALL, moto_s3, s3_keys

from opdlm.config.base import apply_overrides

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def repo(tmp_path):
    """A fresh clone's worth of files: the library, dvc.yaml and the tiny recipe at test size."""
    if not (BIN / "dvc").exists() and shutil.which("dvc") is None:
        pytest.skip("dvc is not installed")
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "opdlm", repo / "opdlm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy2(ROOT / name, repo / name)
    recipe = apply_overrides(yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text()), SMALL)
    (repo / "configs").mkdir()
    (repo / "configs" / "tiny.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"], ["dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "dvc init"]):  # fmt: skip
        _run(cmd, repo, env)
    return repo, env


def test_dvc_repro_then_noop_then_s3_remote(repo):
    repo, env = repo
    out = _run(["dvc", "repro"], repo, env)
    for stage in ("data", "teacher", "convert", "train", "eval"):
        assert f"Running stage '{stage}'" in out
    runs = repo / "runs" / "dvc"
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())["synthetic"]
    assert 0.0 <= metrics["student_accuracy"] <= 1.0 and metrics["n"] == 10
    assert (runs / "student" / "model.safetensors").is_file() and not (runs / "student" / "optimizer.pt").exists()
    assert (runs / "eval" / "sweep" / "synthetic" / "sweep_pareto.png").is_file()
    assert (runs / "plots" / "train_curves.csv").read_text().startswith("step,loss")
    info = json.loads((runs / "data" / "train.jsonl.info.json").read_text())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    data_out = next(o for o in lock["stages"]["data"]["outs"] if o["path"].endswith("train.jsonl"))
    assert data_out["md5"] == info["md5"]  # the digest MLflow records is DVC's md5
    assert lock["stages"]["train"]["params"]["configs/tiny.yaml"]["train"]["stages"][0]["rollout_steps"] == 1

    lock_text = (repo / "dvc.lock").read_text()
    again = _run(["dvc", "repro"], repo, env)
    assert "Data and pipelines are up to date." in again and "Running stage" not in again
    assert (repo / "dvc.lock").read_text() == lock_text
    shown = _run(["dvc", "metrics", "show", "--json"], repo, env)
    assert "student_accuracy" in shown

    weights = runs / "student" / "model.safetensors"
    digest = _sha(weights)
    with moto_s3("opdlm-dvc") as (endpoint, _server):
        env = {**env, **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
        _run(["dvc", "remote", "add", "-d", "store", "s3://opdlm-dvc/cache"], repo, env)
        _run(["dvc", "remote", "modify", "store", "endpointurl", endpoint], repo, env)
        _run(["dvc", "push"], repo, env)
        assert len(s3_keys(endpoint, "opdlm-dvc", "cache/")) >= 5
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(runs / "student")
        _run(["dvc", "pull", "runs/dvc/student"], repo, env)
        assert _sha(weights) == digest
