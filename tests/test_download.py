"""The data stage: local sources in several formats, field maps, validation with file and line, atomicity."""

import csv
import json

import pytest

from opdlm.data.download import download_dataset, file_digests
from opdlm.data.schema import read_rows
from opdlm.errors import OpdlmError


def test_jsonl_with_field_map(tmp_path):
    src = tmp_path / "opdlm_train.jsonl"
    src.write_text(
        "\n".join(
            json.dumps({"question": f"q{i}", "ground_truth_answer": i, "domain": "math", "source": "paper"})
            for i in range(5)
        )
    )
    info = download_dataset(str(src), tmp_path / "out" / "train.jsonl", field_map={"answer": "ground_truth_answer"})
    rows = read_rows(info.path)
    assert info.n_rows == 5 and rows[3].answer == "3"
    assert (info.md5, info.sha256) == file_digests(info.path)
    assert json.loads((tmp_path / "out" / "train.jsonl.info.json").read_text())["md5"] == info.md5


def test_json_list_and_csv(tmp_path):
    j = tmp_path / "d.json"
    j.write_text(
        json.dumps(
            [{"question": "a", "answer": "1", "domain": "math", "source": "s", "tests": ["assert 1", "assert 2"]}]
        )
    )
    assert read_rows(download_dataset(str(j), tmp_path / "a.jsonl").path)[0].tests == "assert 1\nassert 2"
    c = tmp_path / "d.csv"
    with c.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["question", "answer", "domain"])
        w.writeheader()
        w.writerow({"question": "x", "answer": "y", "domain": "chat"})
    row = read_rows(download_dataset(str(c), tmp_path / "b.jsonl").path)[0]
    assert row.source == str(c)  # rows without a source are labelled with where they came from


def test_bad_row_names_file_and_line_and_publishes_nothing(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(
        '{"question": "ok", "answer": "1", "domain": "math", "source": "s"}\n'
        '{"question": "", "answer": "1", "domain": "math", "source": "s"}\n'
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(OpdlmError, match=r"bad.jsonl:2: field 'question'"):
        download_dataset(str(src), out)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))
    src.write_text('{"question": "ok"\n')
    with pytest.raises(OpdlmError, match=r"bad.jsonl:1: not valid JSON"):
        download_dataset(str(src), out)


def test_unknown_sources(tmp_path):
    with pytest.raises(OpdlmError, match="dataset file not found"):
        download_dataset(str(tmp_path / "nope.jsonl"), tmp_path / "o.jsonl")
    with pytest.raises(OpdlmError, match="unknown builtin dataset"):
        download_dataset("builtin:nothing", tmp_path / "o.jsonl")
