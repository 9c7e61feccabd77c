"""Retention metrics: identities against brute force; early stops, rambling and loops scored down."""

from __future__ import annotations

import itertools

import pytest
import torch

from opdlm.eval.retention import (
    common_prefix_length,
    completion_nll,
    lcs_f1,
    lcs_length,
    prefix_agreement,
    repeated_ngram_fraction,
    retention_metrics,
)


def _brute_lcs(a: list[int], b: list[int]) -> int:
    """Longest common subsequence by trying every subsequence of ``a``."""
    for k in range(len(a), 0, -1):
        for idx in itertools.combinations(range(len(a)), k):
            sub, j = [a[i] for i in idx], 0
            for y in b:
                if j < k and sub[j] == y:
                    j += 1
            if j == k:
                return k
    return 0


@pytest.mark.parametrize("seed", range(20))
def test_lcs_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 4, (int(torch.randint(0, 8, (1,), generator=g)),), generator=g).tolist()
    b = torch.randint(0, 4, (int(torch.randint(0, 8, (1,), generator=g)),), generator=g).tolist()
    assert lcs_length(a, b) == _brute_lcs(a, b) == lcs_length(b, a)


def test_agreement_identities():
    t = [5, 6, 7, 8, 2]
    assert lcs_f1(t, t) == prefix_agreement(t, t) == 1.0
    assert lcs_f1([], t) == prefix_agreement([], t) == 0.0
    assert common_prefix_length([5, 6, 9], t) == 2
    assert prefix_agreement([5, 6, 9], t) == pytest.approx(2 / 5)
    assert lcs_f1([5, 7, 2], t) == pytest.approx(2 * 3 / 8)
    assert repeated_ngram_fraction([1, 2, 3, 4, 1, 2, 3, 4], n=4) == pytest.approx(1 / 8)  # only the last 4-gram
    assert repeated_ngram_fraction([1, 2, 3]) == 0.0


def _tiny_lm(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from opdlm.testing.tiny import tiny_config

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=40, hidden_size=32)).eval()


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_completion_nll_matches_a_plain_forward_per_row(arch):
    """Batched, right-padded, kept-logits scoring == -log softmax of one unpadded forward per row."""
    model = _tiny_lm(arch)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 40, (n,), generator=g).tolist() for n in (3, 7, 1, 5, 4)]
    completions = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (4, 1, 6, 0, 3)]
    got = completion_nll(model, prompts, completions, max_logits=3 * 8 * 40)  # a few rows per batch
    for p, c, nll in zip(prompts, completions, got):
        assert len(nll) == len(c)
        if not c:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0].float()
        want = [-torch.log_softmax(logits[len(p) - 1 + k], -1)[tok].item() for k, tok in enumerate(c)]
        assert nll == pytest.approx(want, abs=1e-4)


def test_out_of_vocabulary_token_costs_the_most():
    model = _tiny_lm("qwen3")
    prompt, c = [4, 5, 6], [7, 40]  # 40: a student's added mask row, one past the teacher's vocabulary
    nll = completion_nll(model, [prompt], [c])[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + [7]])).logits[0, -1].float()
    assert nll[1] == pytest.approx(-torch.log_softmax(logits, -1).min().item(), abs=1e-4)


class CountingTeacher(torch.nn.Module):
    """A bigram LM that counts 3, 4, ... up to 12 and then stops (EOS = 1) with high confidence.

    Repeating a token or going back costs a lot, like a teacher that does not loop.
    """

    EOS, LAST = 1, 12

    def __init__(self, vocab: int = 16):
        super().__init__()
        table = torch.full((vocab, vocab), -6.0)
        for t in range(vocab):
            table[t, t + 1 if 3 <= t < self.LAST else self.EOS] = 6.0
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.embed = torch.nn.Embedding(vocab, 1)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, logits_to_keep=None):
        logits = self.table[input_ids]
        from types import SimpleNamespace

        return SimpleNamespace(logits=logits[:, logits_to_keep] if logits_to_keep is not None else logits)


def _score(student_rows):
    teacher = CountingTeacher()
    prompts = [[2, 3]] * len(student_rows)
    teacher_rows = [list(range(4, 13)) + [CountingTeacher.EOS]] * len(student_rows)  # the teacher's greedy
    return retention_metrics(
        student_rows,
        teacher_rows,
        completion_nll(teacher, prompts, student_rows),
        completion_nll(teacher, prompts, teacher_rows),
    )


def test_a_student_equal_to_the_teacher_scores_perfectly():
    m = _score([list(range(4, 13)) + [1]])
    assert m.agreement == m.prefix_agreement == m.exact_match == 1.0
    assert m.nll_ratio == pytest.approx(1.0) and m.nll_gap == pytest.approx(0.0)
    assert m.repetition == m.teacher_repetition == 0.0 and m.length_ratio == 1.0


@pytest.mark.parametrize(
    "name, student",
    [
        ("stops early", [4, 5, 6, 1]),
        ("rambles past the end", list(range(4, 13)) + [13, 14, 15, 3, 4, 5]),  # length cap, no stop token
        ("repeats itself", [4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7]),
    ],
)
def test_each_failure_mode_scores_worse_on_every_headline_metric(name, student):
    good = _score([list(range(4, 13)) + [1]])
    bad = _score([student])
    assert bad.agreement < 0.8 * good.agreement, name
    assert bad.prefix_agreement < 0.8 * good.prefix_agreement, name
    assert bad.exact_match == 0.0, name
    assert bad.nll_ratio > 2.0 * good.nll_ratio and bad.nll_gap > 0.5, name
    if name == "repeats itself":
        assert bad.repetition > good.repetition + 0.3


def test_a_near_copy_scores_between_the_failures_and_the_teacher():
    """One wrong token in the middle: agreement stays high, below a perfect copy, above every failure mode."""
    near = _score([[4, 5, 6, 7, 9, 9, 10, 11, 12, 1]])
    assert 0.85 < near.agreement < 1.0
    assert _score([[4, 5, 6, 1]]).agreement < near.agreement


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same non-zero number"):
        retention_metrics([[1]], [], [[0.1]], [])
    with pytest.raises(ValueError, match="2 tokens came with 1"):
        retention_metrics([[1, 2]], [[1]], [[0.1]], [[0.1]])
