"""Two OPD steps through DeepSpeed ZeRO-2 on CPU (one process) land on the plain-PyTorch weights, and resume.

DeepSpeed runs in a subprocess (it joins a process group and patches global state). Its first use
JIT-compiles a small communication op; ``TORCH_EXTENSIONS_DIR`` points at a persistent cache so
that happens once per machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_loop import FAST, TINY, weights

from opdlm.config.recipe import load_recipe
from opdlm.train.loop import SUMMARY_FILE, train

REPO = Path(__file__).resolve().parents[1]
ONE_STEP_STAGES = "train.stages=[{name: a, rollout_steps: 1, length: {start: 8, end: 8}}, {name: b, rollout_steps: 1, length: {start: 8, end: 8}}]"
OVERRIDES = [*FAST, ONE_STEP_STAGES]


def _env() -> dict[str, str]:
    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    return {**os.environ, "TORCH_EXTENSIONS_DIR": cache, "OMP_NUM_THREADS": "1"}


def _train_cli(out: Path, teacher: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "opdlm.cli.main", "train", "--config", str(TINY), "--out", str(out), "--teacher",
           str(teacher), "--quiet", *OVERRIDES, *extra]  # fmt: skip
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_two_steps_through_deepspeed_zero2_match_plain_pytorch_and_resume(tiny_teacher_dir, tmp_path):
    ref = tmp_path / "torch"
    train(load_recipe(TINY, OVERRIDES), ref, teacher=str(tiny_teacher_dir), console=False)

    out = tmp_path / "ds"
    zero2 = f"train.deepspeed={REPO / 'configs' / 'deepspeed' / 'zero2.json'}"
    first = _train_cli(out, tiny_teacher_dir, zero2, "--until-stage", "a")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = out / "checkpoints" / "step-000001"
    assert (ckpt / "deepspeed" / "state").is_dir() and not (ckpt / "optimizer.pt").exists()
    second = _train_cli(out, tiny_teacher_dir, zero2, "--until-stage", "b")  # resumes DeepSpeed's optimizer state
    assert second.returncode == 0, second.stderr[-3000:]

    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["finished"] and summary["rollout_step"] == 2 and summary["optimizer_steps"] >= 2
    w_ds, w_ref = weights(out), weights(ref)
    for k in w_ref:
        assert torch.allclose(w_ds[k], w_ref[k], atol=1e-5), k
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    ref_metrics = [json.loads(ln) for ln in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [round(m["loss"], 4) for m in metrics] == [round(m["loss"], 4) for m in ref_metrics]
