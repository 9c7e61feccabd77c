"""Helpers the test files share (no tests here): recipe settings at test size, weights, free ports, a local S3.

Test files import from here (``from helpers import ...``: pytest puts tests/ on the path), never from each other.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

# The tiny recipe at test size: a 2-layer teacher bootstrapped for 30 steps, one rollout step per
# curriculum stage, ten eval rows, a two-point sweep.
SMALL = [
    "teacher.bootstrap.steps=30",
    "teacher.bootstrap.warmup_steps=3",
    "teacher.bootstrap.n_train=300",
    "teacher.bootstrap.n_eval=0",
    "teacher.bootstrap.progress=false",
    "teacher.bootstrap.hidden_size=32",
    "teacher.bootstrap.intermediate_size=64",
    "teacher.bootstrap.num_layers=2",
    "teacher.bootstrap.num_threads=1",
    "train.num_prompts=64",
    "train.prompts_per_rollout=4",
    "train.optimizer_steps_per_rollout=1",
    "train.micro_batch_size=4",
    "train.num_threads=1",
    # two one-step stages whatever configs/tiny.yaml lists, so the tests below can name them
    "train.stages=[{name: short, rollout_steps: 1, length: {start: 8, end: 8}}, "
    "{name: full, rollout_steps: 1, length: {start: 8, end: 16, ramp_steps: 1}}]",
    "eval.limit=10",
    "eval.batch_size=10",
    "eval.sweep_thresholds=[1.0,0.8]",
    "sampler.max_new_tokens=24",
]

# The training loop's fast variant of the tiny recipe (documented in configs/tiny.yaml's header).
FAST_STAGES = (
    "[{name: short, rollout_steps: 2, length: {start: 8, end: 8}},"
    " {name: full, rollout_steps: 2, length: {start: 8, end: 16, ramp_steps: 1}, threshold: 0.8}]"
)
FAST = [  # the fast variant documented in configs/tiny.yaml's header
    "train.prompts_per_rollout=4",
    "train.optimizer_steps_per_rollout=2",
    "train.micro_batch_size=2",
    "train.num_prompts=64",
    "train.checkpoint_every=1",
    "train.deterministic=true",
    f"train.stages={FAST_STAGES}",
]
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def fast_recipe(*extra: str):
    """configs/tiny.yaml with :data:`FAST` and ``extra`` overrides applied."""
    from opdlm.config.recipe import load_recipe

    return load_recipe(TINY, FAST + list(extra))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a} and {b}"


def train_cmd(out: Path, teacher: Path, *overrides: str, recipe: Path = TINY) -> list[str]:
    """``python -m opdlm.cli.main train`` on ``recipe`` into ``out`` (quiet), with ``overrides`` (key=value)."""
    cli = [sys.executable, "-m", "opdlm.cli.main", "train", "--config", str(recipe), "--out", str(out)]
    return [*cli, "--teacher", str(teacher), "--quiet", *overrides]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(*buckets: str) -> Iterator[tuple[str, object]]:
    """A moto S3 server on 127.0.0.1 with ``buckets`` created; yields ``(endpoint, server)``."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint, server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    keys, token = [], None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kwargs)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def use_uncompiled_flex_attention(monkeypatch) -> None:
    """Run Hugging Face's ``flex_attention`` without ``torch.compile`` (the unfused reference path:
    seconds on tiny CPU shapes instead of a ~37 s compile), for the test that calls it."""
    import warnings

    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def eager(query, key, value, training=False, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", eager)
