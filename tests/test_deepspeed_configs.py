"""Every shipped DeepSpeed config (configs/deepspeed/*.json) is accepted by DeepSpeed's own parser.

The JSON files leave batch sizes, clipping and precision to the trainer (``"auto"``); each is filled
exactly as the trainer fills it (:func:`opdlm.train.deepspeed_engine.resolve_ds_config`, or
``resolve_teacher_ds_config`` for the teacher's inference engine) and then parsed by
``deepspeed.runtime.config.DeepSpeedConfig``, the class ``deepspeed.initialize`` builds. It runs on CPU
without a process group; the world size it would read from ``deepspeed.comm`` is set per case, so a
typo in a key, a bad value or an inconsistent batch-size triple fails here instead of on a cluster.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "deepspeed").glob("*.json"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"zero2.json", "zero3.json"} <= names, f"configs/deepspeed holds {sorted(names)}"


def parse_as_deepspeed(ds: dict, world_size: int, monkeypatch):
    """``DeepSpeedConfig(ds)`` as rank 0 of a ``world_size``-rank job."""
    import deepspeed.runtime.config as ds_config

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda *a, **k: world_size)
    return ds_config.DeepSpeedConfig(ds)


@pytest.mark.parametrize("world_size", [1, 16])
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_deepspeed_parses_config(path, world_size, monkeypatch):
    from opdlm.config.train import TrainConfig
    from opdlm.train.deepspeed_engine import read_ds_json, resolve_ds_config, resolve_teacher_ds_config

    raw = read_ds_json(path, "train.deepspeed")
    json.loads(path.read_text())  # strict JSON: DeepSpeed would also take hjson, our tools would not
    if "teacher" in path.stem:
        ds = resolve_teacher_ds_config(raw, world_size, path.name)
    else:
        ds = resolve_ds_config(raw, TrainConfig(micro_batch_size=4), world_size, path.name)
    cfg = parse_as_deepspeed(ds, world_size, monkeypatch)
    assert cfg.world_size == world_size
    assert cfg.train_batch_size == cfg.train_micro_batch_size_per_gpu * cfg.gradient_accumulation_steps * world_size
    stage = re.match(r"zero(\d)", path.stem)
    if stage:  # the file name promises a ZeRO stage
        assert cfg.zero_optimization_stage == int(stage.group(1)), (
            f"{path.name} configures stage {cfg.zero_optimization_stage}"
        )


def test_parser_rejects_a_broken_config(monkeypatch):
    """The check above can fail: an inconsistent batch-size triple is refused by the same parser."""
    with pytest.raises(AssertionError):
        parse_as_deepspeed(
            {"train_batch_size": 7, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2},
            1,
            monkeypatch,
        )
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="stage3_prefetch_bucket"):  # a misspelt ZeRO key
        parse_as_deepspeed(
            {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "stage3_prefetch_bucket": 1}},
            1,
            monkeypatch,
        )
