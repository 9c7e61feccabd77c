"""OPD steps through DeepSpeed on CPU (one process) land on the plain-PyTorch weights, and resume.

ZeRO-2: two steps in two ``--until-stage`` calls (the second resumes DeepSpeed's optimizer state).
ZeRO-3 with the teacher as a ZeRO-3 inference engine (``teacher_offload``): one step (weights
gathered for rollouts and for saving).

DeepSpeed runs in a subprocess (it joins a process group and patches global state). Its first use
JIT-compiles a small communication op; ``TORCH_EXTENSIONS_DIR`` points at a persistent cache so
that happens once per machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import FAST, TINY, train_cmd, weights

from opdlm.config.recipe import load_recipe
from opdlm.train.folder import TrainingFolder
from opdlm.train.loop import train

REPO = Path(__file__).resolve().parents[1]
ONE_STEP_STAGES = (
    "train.stages=[{name: a, rollout_steps: 1, length: {start: 8, end: 8}}, {name: b, rollout_steps: 1, length: "
    "{start: 8, end: 8}}]"
)
OVERRIDES = [*FAST, ONE_STEP_STAGES]


def _env() -> dict[str, str]:
    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    return {**os.environ, "TORCH_EXTENSIONS_DIR": cache, "OMP_NUM_THREADS": "1"}


def _train_cli(out: Path, teacher: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = train_cmd(out, teacher, *OVERRIDES, *extra)
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def reference(tiny_teacher_dir, tmp_path_factory):
    """The same two steps in plain PyTorch (checkpoints after step 1 and step 2)."""
    ref = tmp_path_factory.mktemp("torch") / "run"
    train(load_recipe(TINY, OVERRIDES), ref, teacher=str(tiny_teacher_dir), console=False)
    return ref


def assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


@pytest.mark.slow
def test_two_steps_through_deepspeed_zero2_match_plain_pytorch_and_resume(reference, tiny_teacher_dir, tmp_path):
    ref = reference

    out = tmp_path / "ds"
    zero2 = f"train.deepspeed={REPO / 'configs' / 'deepspeed' / 'zero2.json'}"
    first = _train_cli(out, tiny_teacher_dir, zero2, "--until-stage", "a")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = TrainingFolder(out).checkpoints / "step-000001"
    assert (ckpt / "deepspeed" / "state").is_dir() and not (ckpt / "optimizer.pt").exists()
    second = _train_cli(out, tiny_teacher_dir, zero2, "--until-stage", "b")  # resumes DeepSpeed's optimizer state
    assert second.returncode == 0, second.stderr[-3000:]

    summary = json.loads(TrainingFolder(out).summary_file.read_text())
    assert summary["finished"] and summary["rollout_step"] == 2 and summary["optimizer_steps"] >= 2
    assert_close_weights(weights(out), weights(ref))
    metrics = [json.loads(ln) for ln in TrainingFolder(out).metrics_file.read_text().splitlines()]
    ref_metrics = [json.loads(ln) for ln in TrainingFolder(ref).metrics_file.read_text().splitlines()]
    assert [round(m["loss"], 4) for m in metrics] == [round(m["loss"], 4) for m in ref_metrics]


@pytest.mark.slow
def test_zero3_student_with_zero3_offloaded_teacher_matches_plain_pytorch(reference, tiny_teacher_dir, tmp_path):
    out = tmp_path / "z3"
    zero3 = f"train.deepspeed={REPO / 'configs' / 'deepspeed' / 'zero3.json'}"
    offload = f"train.teacher_deepspeed={REPO / 'configs' / 'deepspeed' / 'zero3_teacher_offload.json'}"
    done = _train_cli(out, tiny_teacher_dir, zero3, "train.teacher_offload=true", offload, "--until-stage", "a")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (TrainingFolder(out).checkpoints / "step-000001" / "deepspeed" / "state").is_dir()
    # the exported student is whole (gathered from ZeRO-3's partitions) and equals PyTorch's first step
    assert_close_weights(weights(out), weights(TrainingFolder(reference).checkpoints / "step-000001"))
