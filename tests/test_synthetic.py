"""The synthetic suite: determinism, disjoint splits, families, lengths, answer checking, tokenizer."""

from __future__ import annotations

import collections

import pytest

from opdlm.data.prompting import format_prompt
from opdlm.data.synthetic import (
    FAMILIES,
    extract_answer,
    family_of,
    is_correct,
    load_split,
    question_digest,
    split_of,
)
from opdlm.data.tokenizer import EOS, PAD, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def train_rows():
    return load_split("train", n=2000, seed=0)


@pytest.fixture(scope="module")
def eval_rows():
    return load_split("eval", seed=0)


def test_deterministic_for_a_seed():
    assert load_split("train", n=200, seed=3) == load_split("train", n=200, seed=3)
    assert load_split("eval", n=50, seed=3) == load_split("eval", n=50, seed=3)
    assert load_split("train", n=200, seed=3) != load_split("train", n=200, seed=4)


def test_splits_are_disjoint_by_question_hash(train_rows, eval_rows):
    train_q = {question_digest(r.question) for r in train_rows}
    eval_q = {question_digest(r.question) for r in eval_rows}
    assert not train_q & eval_q
    # The split is a function of the question text alone, whatever the seed that drew it.
    other_seed = load_split("train", n=2000, seed=7)
    assert all(split_of(r.question) == "train" for r in [*train_rows, *other_seed])
    assert all(split_of(r.question) == "eval" for r in eval_rows)
    assert not {question_digest(r.question) for r in other_seed} & eval_q


def test_no_duplicate_questions_and_sizes(train_rows, eval_rows):
    assert len(train_rows) == 2000 and 200 <= len(eval_rows) <= 500
    assert len({r.question for r in train_rows}) == len(train_rows)
    assert len({r.id for r in eval_rows}) == len(eval_rows)


def test_every_family_present_and_balanced(train_rows, eval_rows):
    for rows in (train_rows, eval_rows):
        counts = collections.Counter(family_of(r) for r in rows)
        assert set(counts) == set(FAMILIES)
        assert max(counts.values()) - min(counts.values()) <= 1
    assert all(r.source == f"builtin:synthetic/{family_of(r)}" for r in train_rows)
    assert {r.domain for r in train_rows} <= {"math", "logic"}


def test_reference_responses_are_correct_and_perturbations_are_not(train_rows):
    for row in train_rows:
        assert row.response.rstrip().endswith(f"\\boxed{{{row.answer}}}")
        assert is_correct(row.response, row.answer)
        assert not is_correct(row.response, row.answer + "1")
        assert not is_correct(row.response.replace(f"\\boxed{{{row.answer}}}", "\\boxed{?}"), row.answer)


def test_response_lengths_under_the_shipped_tokenizer(tokenizer, train_rows, eval_rows):
    for row in [*train_rows, *eval_rows]:
        n_tokens = len(tokenizer(row.response, add_special_tokens=False).input_ids)
        assert 20 <= n_tokens <= 100, (row.response, n_tokens)


def test_extract_answer_and_is_correct():
    assert extract_answer("a \\boxed{1} then \\boxed{ 42 }") == "42"
    assert extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("no box") is None
    assert extract_answer("cut off \\boxed{12") is None
    assert is_correct("so \\boxed{007}", "7") and is_correct("\\boxed{a b c}", "abc")
    assert is_correct("\\boxed{0235}", "0235") and not is_correct("\\boxed{235}", "0235")  # a sorted 0 counts
    assert is_correct("\\boxed{-12}", "-12") and not is_correct("\\boxed{12}", "-12")
    assert not is_correct("\\boxed{abd}", "abc") and not is_correct("", "1")


def test_bad_arguments():
    with pytest.raises(ValueError):
        load_split("test", n=3)
    with pytest.raises(ValueError):
        load_split("train", n=3, families=("nope",))


def test_tokenizer_round_trip_and_special_tokens(tokenizer, train_rows):
    assert tokenizer.pad_token == PAD and tokenizer.eos_token == EOS
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert 100 <= len(tokenizer) <= 512
    for row in train_rows[:200]:
        text = format_prompt(tokenizer, row.question, row.domain) + row.response
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    free_text = "Any ASCII: {x} = [1, 2]; tabs\tand\nlines ~!"
    assert tokenizer.decode(tokenizer(free_text).input_ids) == free_text


def test_digits_and_random_letters_are_single_characters(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("Compute 4827 + 35. \\boxed{qzvx}").input_ids)
    assert [p for p in pieces if p.strip().isdigit()] == ["4", "8", "2", "7", "3", "5"]
    assert pieces[-6:] == ["{", "q", "z", "v", "x", "}"]
    assert "boxed" in pieces


def test_a_digit_is_one_token_wherever_it_is_written(tokenizer):
    seven = tokenizer.convert_tokens_to_ids("7")
    for text in ("3+7", "= 7", "17", "then 7,", " 7"):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert seven in ids, text
    assert all(not piece.startswith(" ") or not piece.strip().isdigit() for piece in tokenizer.get_vocab())


def test_chat_template(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    prompt = format_prompt(tokenizer, "Sort the letters b a.", "logic")
    assert prompt == "<|user|>Sort the letters b a.<|assistant|>"
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert format_prompt(reloaded, "Sort the letters b a.", "logic") == prompt
    assert reloaded("x" + prompt).input_ids == tokenizer("x" + prompt).input_ids
    assert (reloaded.pad_token_id, reloaded.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_tokenizer_is_deterministic(tokenizer):
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_readme_examples_are_held_out_suite_rows_with_the_answers_it_shows():
    """The README's prompts are what the tiny model was trained to answer (a prompt outside the suite's
    templates gets nonsense), taken from the held-out split, with the answers its comment names."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("model.predict(") :].split("```")[0]
    prompts = re.findall(r'"([^"]+\.)"', block)
    answers = re.findall(r"\\boxed\{(\w+)\}", block.split("right answers:")[1])
    held_out = {r.question: r.answer for r in load_split("eval", 50)}
    assert len(prompts) == len(answers) == 4 and set(prompts) <= set(held_out)
    assert [held_out[p] for p in prompts] == answers
    cli = re.search(r'opdlm generate --model STUDENT --prompt "([^"]+)"', readme).group(1)
    assert cli in held_out
