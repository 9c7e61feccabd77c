"""Checked reads of user files: one line naming the file, raised as the caller's error type."""

import pytest

from opdlm.errors import ConfigError
from opdlm.fsutil import read_json_object


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"train.deepspeed: .*ds.json not found"),
        (b'{"a": ', r"train.deepspeed: .*ds.json is not valid JSON: .* \(line 1\)"),
        (b"[1, 2]", r"train.deepspeed: .*ds.json must hold a JSON object"),
        (b'{"a": "\xff"}', r"train.deepspeed: .*ds.json:1: not UTF-8 text"),
    ],
    ids=["missing", "malformed", "not-an-object", "not-utf8"],
)
def test_bad_json_files_fail_with_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "ds.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_json_object(path, ConfigError, "train.deepspeed: ")
    assert "\n" not in str(info.value)


def test_an_object_reads_back(tmp_path):
    (tmp_path / "ok.json").write_text('\ufeff{"zero_optimization": {"stage": 2}}')  # a BOM is tolerated
    assert read_json_object(tmp_path / "ok.json") == {"zero_optimization": {"stage": 2}}
