"""Shared fixtures: tiny local models (never the network), quiet offline environment."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A random tiny Qwen3 with a character tokenizer and 8 padded embedding rows."""
    from opdlm.testing.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("teacher") / "qwen3", "qwen3")


@pytest.fixture(scope="session")
def tiny_student_dir(tiny_teacher_dir, tmp_path_factory):
    """``tiny_teacher_dir`` converted with block size 4, no logit shift."""
    from opdlm.models.convert import convert_teacher

    return convert_teacher(tiny_teacher_dir, tmp_path_factory.mktemp("student") / "b4", block_size=4)
