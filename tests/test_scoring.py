"""Answer scoring: math-verify equivalences, the multiple-choice cascade, completions files, ``opdlm score``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opdlm.errors import OpdlmError
from opdlm.eval.benchmarks import get_benchmark, load_benchmark
from opdlm.eval.choice import choice_equal, extract_choice, option_letters
from opdlm.eval.math_scoring import gsm8k_final_answer, last_boxed, math_equal
from opdlm.eval.scoring import read_completions, score_completions

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


@pytest.mark.parametrize(
    "completion,answer",
    [
        ("so the answer is \\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{1/2}", "\\frac12"),
        ("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}"),
        ("first \\boxed{7}, then corrected: \\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("\\boxed{(3,4)}", "(3,4)"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("He has 1250 marbles.\n#### 1,250", "1250"),
        ("The rope pieces are 2.25 meters long.", "2.25"),
        ("$\\boxed{24}$", "24"),
    ],
)
def test_math_equivalent_answers(completion, answer):
    assert math_equal(completion, answer)


@pytest.mark.parametrize(
    "completion,answer",
    [
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("\\boxed{(3,5)}", "(3,4)"),
        ("\\boxed{24} is wrong, it is \\boxed{25}", "24"),
        ("", "1"),
        ("no number at all", "3"),
        ("\\boxed{x^2+1}", "(x+1)^2"),
    ],
)
def test_math_different_answers(completion, answer):
    assert not math_equal(completion, answer)


def test_boxed_and_gsm8k_extraction():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{3}") == "3" and last_boxed("cut \\boxed{12") is None and last_boxed("none") is None
    assert gsm8k_final_answer("x\n#### 1,234.") == "1234" and gsm8k_final_answer("no marker") is None


@pytest.mark.parametrize(
    "text,letters,expected",
    [
        ("I think it is B, so \\boxed{C}", "ABCD", "C"),  # 1. boxed beats everything
        ("\\boxed{\\text{(D)}}", "ABCD", "D"),
        ("\\boxed{42} and the answer is B", "ABCD", "B"),  # a boxed non-letter falls through
        ("A looks right. The answer is (B).", "ABCD", "B"),  # 2. "answer is (X)"
        ("**Answer:** D", "ABCD", "D"),
        ("answer: c", "ABCD", None),  # lowercase letters are words, not options
        ("Option A is wrong; C. is right", "ABCD", "C"),  # 3. last standalone letter
        ("The answer is a number", "ABCD", None),
        ("I choose J", option_letters(10), "J"),
        ("I choose J", "ABCD", None),  # not an option of this question
        ("Answer: Because of gravity", "ABCD", None),
        ("", "ABCD", None),
    ],
)
def test_choice_cascade(text, letters, expected):
    assert extract_choice(text, letters) == expected


def test_choice_equal_and_letters():
    assert choice_equal("the answer is (b)... no: The answer is C", "C")
    assert option_letters(4) == "ABCD"
    with pytest.raises(ValueError):
        option_letters(0)


def test_score_completions_per_benchmark():
    gsm8k = load_benchmark("gsm8k", FIXTURES)
    scores = score_completions(get_benchmark("gsm8k"), gsm8k, ["\\boxed{36}", "#### 1,250", "it is 2.5"])
    assert [s.correct for s in scores] == [True, True, False] and scores[0].extracted == "36"
    mmlu = load_benchmark("mmlu", FIXTURES)
    scores = score_completions(get_benchmark("mmlu"), mmlu, ["\\boxed{C}", "The answer is A", "Answer: A"])
    assert [s.correct for s in scores] == [True, False, True] and scores[1].extracted == "A"
    synthetic = load_benchmark("synthetic", FIXTURES, limit=2)
    right = [r.response for r in synthetic]
    assert all(s.correct for s in score_completions(get_benchmark("synthetic"), synthetic, right))
    with pytest.raises(ValueError, match="2 rows but 1 completions"):
        score_completions(get_benchmark("synthetic"), synthetic, right[:1])


def _completions(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "completions.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_read_completions_pairs_by_id_in_file_order(tmp_path):
    rows = load_benchmark("gsm8k", FIXTURES)
    path = _completions(tmp_path, [{"task_id": "gsm8k/2", "completion": "2.25"}, "", {"id": "gsm8k/0", "text": "36"}])
    paired, texts = read_completions(path, rows)
    assert [r.id for r in paired] == ["gsm8k/2", "gsm8k/0"] and texts == ["2.25", "36"]


@pytest.mark.parametrize(
    "lines,needle",
    [
        (["{oops"], ":1: not valid JSON"),
        ([{"completion": "x"}], ":1: missing task id"),
        ([{"id": "gsm8k/0"}], ":1: missing completion text"),
        ([{"id": "gsm8k/99", "completion": "x"}], ":1: unknown task id 'gsm8k/99'"),
        (
            [{"id": "gsm8k/0", "completion": "x"}, {"id": "gsm8k/0", "completion": "y"}],
            ":2: task id 'gsm8k/0' appears twice",
        ),
        ([], "has no lines"),
    ],
)
def test_read_completions_errors_name_file_and_line(tmp_path, lines, needle):
    with pytest.raises(OpdlmError, match=needle.replace("(", r"\(")):
        read_completions(_completions(tmp_path, lines), load_benchmark("gsm8k", FIXTURES))


def test_score_cli_writes_summary_and_samples(tmp_path, capsys):
    from opdlm.cli.main import main

    path = _completions(
        tmp_path, [{"id": "gsm8k/0", "completion": "\\boxed{36}"}, {"id": "gsm8k/1", "completion": "12"}]
    )
    out = tmp_path / "score.json"
    code = main(
        [
            "score",
            "--benchmark",
            "gsm8k",
            "--completions",
            str(path),
            "--data-dir",
            str(FIXTURES),
            "--json-out",
            str(out),
        ]
    )
    assert code == 0 and "accuracy 0.5000 (1/2)" in capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert (summary["n"], summary["correct"], summary["accuracy"]) == (2, 1, 0.5)
    samples = [json.loads(x) for x in (tmp_path / "score.samples.jsonl").read_text().splitlines()]
    assert [(s["id"], s["correct"], s["extracted"]) for s in samples] == [
        ("gsm8k/0", True, "36"),
        ("gsm8k/1", False, None),
    ]


def test_score_cli_errors_are_one_line(tmp_path, capsys):
    from opdlm.cli.main import main

    path = _completions(tmp_path, [{"id": "gsm8k/7", "completion": "1"}])
    assert main(["score", "--benchmark", "gsm8k", "--completions", str(path), "--data-dir", str(FIXTURES)]) == 2
    assert main(["score", "--benchmark", "gsm9k", "--completions", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "unknown task id 'gsm8k/7'" in errors[0] and "gsm9k" in errors[1]
