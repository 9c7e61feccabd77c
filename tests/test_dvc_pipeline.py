"""``dvc repro`` in a fresh clone of this repository reproduces the tiny run from dvc.yaml, a second ``dvc repro``
does nothing, and the outputs round-trip through an S3 remote (moto on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import SMALL, moto_s3, s3_keys

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


def _readme_remote_commands(repo: Path, endpoint: str) -> list[list[str]]:
    """The README's ``dvc remote add ... && dvc push`` line, pointed at the test's S3 server."""
    line = re.search(r"`(dvc remote add [^`]*)`", (repo / "README.md").read_text()).group(1)
    return [cmd.split() for cmd in line.replace("http://127.0.0.1:9000", endpoint).split(" && ")]


@pytest.fixture
def repo(tmp_path):
    """A plain ``git clone`` of this repository (committed files only, no ``dvc init``), its tiny recipe
    edited down to test size as a user would edit it."""
    if not (BIN / "dvc").exists() and shutil.which("dvc") is None:
        pytest.skip("dvc is not installed")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    repo = tmp_path / "repo"
    _run(["git", "clone", "-q", str(ROOT), str(repo)], tmp_path, env)
    recipe = apply_overrides(yaml.safe_load((repo / "configs" / "tiny.yaml").read_text()), SMALL)
    (repo / "configs" / "tiny.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return repo, env


def test_dvc_repro_then_noop_then_s3_remote(repo):
    repo, env = repo
    out = _run(["dvc", "repro"], repo, env)
    for stage in ("data", "teacher", "convert", "train", "export", "eval"):
        assert f"Running stage '{stage}'" in out
    runs = repo / "runs" / "dvc"
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())["synthetic"]
    assert 0.0 <= metrics["student_accuracy"] <= 1.0 and metrics["n"] == 10
    assert (runs / "student" / "model.safetensors").is_file() and not (runs / "student" / "optimizer.pt").exists()
    assert (runs / "eval" / "sweep" / "synthetic" / "sweep_pareto.png").is_file()
    assert (runs / "plots" / "train_curves.csv").read_text().startswith("step,loss")
    exports = json.loads((runs / "export" / "exports.json").read_text())  # the register stage's export function
    assert set(exports) == {"sglang", "lmdeploy"}  # registry.export_formats' default
    for fmt, result in exports.items():  # an export folder, or the engine's refusal in one line
        assert (
            (runs / "export" / fmt / "config.json").is_file()
            if not result.startswith("refused: ")
            else "\n" not in result
        )
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
    _run(["dvc", "plots", "show"], repo, env)
    assert (repo / "dvc_plots" / "index.html").is_file()
    # nothing DVC wrote (cache, tmp, plots, outputs) shows up as a change to commit, but the lock file
    changed = _run(["git", "status", "--porcelain", "--untracked-files=all"], repo, env).split()
    assert set(changed) <= {"M", "??", "configs/tiny.yaml", "dvc.lock"}, changed

    weights = runs / "student" / "model.safetensors"
    digest = _sha(weights)
    with moto_s3("opdlm-data") as (endpoint, _server):
        env = {
            **env,
            **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")},
        }
        for command in _readme_remote_commands(repo, endpoint):  # the README's remote line, as typed
            _run(command, repo, env)
        assert len(s3_keys(endpoint, "opdlm-data", "dvc/")) >= 5
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(runs / "student")
        _run(["dvc", "pull", "runs/dvc/student"], repo, env)
        assert _sha(weights) == digest
