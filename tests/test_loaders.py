"""Every benchmark loader on a small fixture in the benchmark's public format, and its error lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opdlm.config.benchmarks import BENCHMARK_NAMES
from opdlm.errors import OpdlmError
from opdlm.eval import loaders
from opdlm.eval.benchmarks import BENCHMARKS, get_benchmark, load_benchmark

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
ALT = Path(__file__).parent / "fixtures" / "benchmarks_alt"


def test_gsm8k_final_answer_after_hashes_without_commas():
    rows = loaders.load_gsm8k(FIXTURES)
    assert [r.answer for r in rows] == ["36", "1250", "2.25"]
    assert rows[0].question.startswith("A baker") and "####" in rows[0].response
    assert {r.domain for r in rows} == {"math"} and [r.id for r in rows] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]


def test_math500_keeps_latex_answers_and_unique_ids():
    rows = loaders.load_math500(FIXTURES)
    assert [r.answer for r in rows] == ["\\frac{1}{2}", "2\\sqrt{2}", "(3,4)"]
    assert rows[0].id == "test/prealgebra/1.json" and rows[0].question.startswith("What is")


def test_aime_both_field_spellings():
    aime24, aime25 = loaders.load_aime24(FIXTURES), loaders.load_aime25(FIXTURES)
    assert [(r.id, r.answer) for r in aime24] == [("aime24/60", "24"), ("aime24/61", "24")]
    assert [(r.id, r.answer) for r in aime25] == [("aime25/0", "42"), ("aime25/1", "1")]
    assert aime25[0].question.startswith("Find the sum")


def test_mmlu_csv_folder_and_cais_jsonl():
    rows = loaders.load_mmlu(FIXTURES)
    assert [r.answer for r in rows] == ["C", "B", "A"]  # subjects in sorted file order
    assert rows[1].source == "mmlu/high_school_physics" and rows[1].id == "mmlu/high_school_physics/0"
    assert rows[1].question.endswith("A. joule\nB. newton\nC. watt\nD. pascal")
    alt = loaders.load_mmlu(ALT)
    assert [r.answer for r in alt] == ["C", "B"] and alt[0].source == "mmlu/high_school_biology"
    assert "C. carbon dioxide" in alt[0].question


def test_mmlu_pro_up_to_ten_options():
    rows = loaders.load_mmlu_pro(FIXTURES)
    assert [r.answer for r in rows] == ["C", "B"]
    assert "J. Ceres" in rows[0].question and "E." not in rows[1].question
    assert rows[0].id == "mmlu_pro/70" and rows[0].source == "mmlu_pro/physics"


def test_gpqa_shuffle_is_seeded_and_keeps_the_gold_option():
    first, again, other = (loaders.load_gpqa_diamond(FIXTURES, seed=s) for s in (0, 0, 1))
    assert first == again
    for row in first:
        letter_line = next(line for line in row.question.splitlines() if line.startswith(f"{row.answer}. "))
        assert letter_line.split(". ", 1)[1] in ("photon", "-1", "mitochondrion")
    assert [r.question for r in first] != [r.question for r in other] or [r.answer for r in first] != [
        r.answer for r in other
    ]
    assert first[0].id == "gpqa_diamond/recFixture0001"


def test_humaneval_from_the_package_and_from_a_local_file():
    rows = loaders.load_humaneval(None)
    assert len(rows) == 164 and rows[0].id == "HumanEval/0"
    assert rows[0].tests.rstrip().endswith(f"check({rows[0].answer})") and rows[0].response
    local = loaders.load_humaneval(ALT)
    assert [r.id for r in local] == ["Fixture/0"] and local[0].answer == "double"
    assert loaders.load_humaneval(FIXTURES)[0].id == "HumanEval/0"  # no local file: the package copy


def test_mbpp_test_split_and_setup_code():
    rows = loaders.load_mbpp(FIXTURES)
    assert [r.id for r in rows] == ["mbpp/11", "mbpp/12"]  # ids outside 11-510 are prompts/train/validation
    assert rows[0].answer == "count_vowels" and rows[1].tests.startswith("import math\n")
    assert "Your code should pass these tests:\nassert count_vowels('hello') == 2" in rows[0].question


def test_synthetic_needs_no_files(tmp_path):
    rows = load_benchmark("synthetic", tmp_path, limit=10)
    assert len(rows) == 10 and all(r.id for r in rows) and rows[0].source.startswith("builtin:synthetic/")


def test_the_registry_holds_exactly_the_names_recipes_accept():
    """eval.benchmarks is validated against the config layer's names; the registry has one entry for each."""
    assert tuple(BENCHMARKS) == BENCHMARK_NAMES


def test_every_benchmark_loads_from_the_fixtures():
    for name in BENCHMARK_NAMES:
        data_dir = FIXTURES
        rows = load_benchmark(name, data_dir, limit=2)
        assert 1 <= len(rows) <= 2, name
        assert all(r.id and r.answer for r in rows), name
        assert get_benchmark(name).question_text(rows[0])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name,rel,content,needle",
    [
        (
            "gsm8k",
            "gsm8k/test.jsonl",
            '{"question": "q", "answer": "no marker"}\n',
            "test.jsonl:1: field 'answer' has no '#### N'",
        ),
        (
            "gsm8k",
            "gsm8k/test.jsonl",
            '{"question": "q", "answer": "#### 1"}\n{broken\n',
            "test.jsonl:2: not valid JSON",
        ),
        ("math500", "math500/test.jsonl", '{"problem": "p"}\n', "test.jsonl:1: missing field 'answer'"),
        ("math500", "math500/test.jsonl", "\n", "no records"),
        ("mmlu", "mmlu/test/x_test.csv", "q,a,b,c,d,E\n", "answer column must be A-D"),
        (
            "mmlu",
            "mmlu/test.jsonl",
            '{"question": "q", "choices": ["a", "b"], "answer": 5}\n',
            "answer index 5 is out of range",
        ),
        (
            "mmlu_pro",
            "mmlu_pro/test.jsonl",
            '{"question": "q", "options": ["a", "b"], "answer": "C"}\n',
            "is not one of the 2 option letters",
        ),
        (
            "gpqa_diamond",
            "gpqa/gpqa_diamond.csv",
            "Question,Correct Answer\nq,a\n",
            "missing column 'Incorrect Answer 1'",
        ),
        ("mbpp", "mbpp/mbpp.jsonl", '{"task_id": 11, "text": "t", "test_list": []}\n', "field 'test_list' is empty"),
        ("aime24", "aime24/test.jsonl", '{"problem": "  ", "answer": "1"}\n', "field 'question'"),
    ],
)
def test_bad_files_fail_with_one_line_naming_the_place(tmp_path, name, rel, content, needle):
    _write(tmp_path / rel, content)
    with pytest.raises(OpdlmError) as info:
        load_benchmark(name, tmp_path)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_missing_file_names_the_expected_path(tmp_path):
    with pytest.raises(OpdlmError, match=r"benchmark gsm8k: data file not found: expected .*gsm8k/test\.jsonl"):
        load_benchmark("gsm8k", tmp_path)
    with pytest.raises(OpdlmError, match="did you mean 'gsm8k'"):
        get_benchmark("gsm8kk")
    with pytest.raises(OpdlmError, match="limit must be >= 1"):
        load_benchmark("synthetic", tmp_path, limit=0)


def test_fixtures_are_the_public_field_names():
    """Guard the fixtures themselves: they must stay in the public formats the loaders claim to read."""
    gsm8k = json.loads((FIXTURES / "gsm8k/test.jsonl").read_text().splitlines()[0])
    assert set(gsm8k) == {"question", "answer"}
    math500 = json.loads((FIXTURES / "math500/test.jsonl").read_text().splitlines()[0])
    assert {"problem", "solution", "answer", "subject", "level", "unique_id"} <= set(math500)
    mbpp = json.loads((FIXTURES / "mbpp/mbpp.jsonl").read_text().splitlines()[0])
    assert {"text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list"} <= set(mbpp)
    pro = json.loads((FIXTURES / "mmlu_pro/test.jsonl").read_text().splitlines()[0])
    assert {"question_id", "question", "options", "answer", "answer_index", "category"} <= set(pro)
